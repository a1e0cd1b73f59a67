//! Tenant isolation: a tenant never sees or touches another tenant's data, and another
//! tenant's ids look exactly like unknown ones.

use serde_json::{Value, json};

use crate::helpers::{
    advance_body, campaign_body, campaign_follow_up_body, follow_up_body, new_id, new_tenant,
    spawn_app, str_field, with,
};

#[tokio::test]
async fn a_tenant_never_lists_another_tenants_campaigns_or_follow_ups() {
    let app = spawn_app().await;
    let (owner, other) = (new_tenant(), new_tenant());
    let campaign = app.seed_campaign(&owner, "running").await;
    app.seed_follow_up(&campaign_follow_up_body(&campaign))
        .await;
    app.seed_follow_up(&follow_up_body(&owner)).await;
    let campaign_id = str_field(&campaign, "/campaign_id");

    assert_eq!(app.all_campaigns(&other, &[]).await, Vec::<Value>::new());
    assert_eq!(app.all_follow_ups(&other, &[]).await, Vec::<Value>::new());
    let by_campaign = app
        .all_follow_ups(&other, &[("campaign_id", campaign_id)])
        .await;
    assert_eq!(by_campaign, Vec::<Value>::new());
    assert_eq!(app.all_campaigns(&owner, &[]).await.len(), 1);
    assert_eq!(app.all_follow_ups(&owner, &[]).await.len(), 2);
}

#[tokio::test]
async fn advancing_another_tenants_campaign_is_not_found_like_an_unknown_id() {
    let app = spawn_app().await;
    let (owner, other) = (new_tenant(), new_tenant());
    let campaign = app.seed_campaign(&owner, "draft").await;
    let body = advance_body(&other, "scheduled", "schedule_campaign");

    let foreign = app
        .advance_campaign(str_field(&campaign, "/campaign_id"), &body)
        .await;
    let unknown = app.advance_campaign(&new_id(), &body).await;

    assert_eq!(foreign.body, unknown.body, "no leak of the id's existence");
    foreign.error(404, "not_found");
    assert_eq!(app.all_campaigns(&owner, &[]).await, vec![campaign]);
}

#[tokio::test]
async fn a_follow_up_naming_another_tenants_campaign_is_campaign_not_found() {
    let app = spawn_app().await;
    let (owner, other) = (new_tenant(), new_tenant());
    let campaign = app.seed_campaign(&owner, "running").await;
    let body = with(
        follow_up_body(&other),
        "/request/followup/campaign_id",
        campaign["campaign_id"].clone(),
    );

    app.create_follow_up(&body)
        .await
        .error(400, "campaign_not_found");

    assert_eq!(app.all_follow_ups(&other, &[]).await, Vec::<Value>::new());
    assert_eq!(app.all_follow_ups(&owner, &[]).await, Vec::<Value>::new());
}

#[tokio::test]
async fn reusing_another_tenants_campaign_id_is_an_id_conflict() {
    let app = spawn_app().await;
    let (owner, other) = (new_tenant(), new_tenant());
    let campaign = app.seed_campaign(&owner, "draft").await;
    let body = with(
        campaign_body(&other),
        "/request/campaign/campaign_id",
        campaign["campaign_id"].clone(),
    );

    let details = app.create_campaign(&body).await.error(409, "id_conflict");

    assert!(
        !details.to_string().contains(owner.as_str()),
        "the conflict must not name the owner: {details}"
    );
    assert_eq!(app.all_campaigns(&other, &[]).await, Vec::<Value>::new());
    assert_eq!(app.all_campaigns(&owner, &[]).await, vec![campaign]);
}

#[tokio::test]
async fn reusing_another_tenants_followup_id_is_an_id_conflict() {
    let app = spawn_app().await;
    let (owner, other) = (new_tenant(), new_tenant());
    let original = app.seed_follow_up(&follow_up_body(&owner)).await["followup"].take();
    let body = with(
        follow_up_body(&other),
        "/request/followup/followup_id",
        original["followup_id"].clone(),
    );

    let details = app.create_follow_up(&body).await.error(409, "id_conflict");

    assert!(
        !details.to_string().contains(owner.as_str()),
        "the conflict must not name the owner: {details}"
    );
    assert_eq!(app.all_follow_ups(&other, &[]).await, Vec::<Value>::new());
    assert_eq!(app.all_follow_ups(&owner, &[]).await, vec![original]);
}

#[tokio::test]
async fn the_same_external_key_under_two_tenants_makes_two_records() {
    let app = spawn_app().await;
    let (owner, other) = (new_tenant(), new_tenant());
    let campaign = campaign_body(&owner);
    let follow_up = with(
        follow_up_body(&owner),
        "/request/followup/external_key",
        json!("shared-key"),
    );
    app.create_campaign(&campaign).await.ok();
    app.create_follow_up(&follow_up).await.ok();

    let campaign_again = with(
        campaign_body(&other),
        "/request/campaign/external_key",
        campaign["request"]["campaign"]["external_key"].clone(),
    );
    let follow_up_again = with(
        follow_up_body(&other),
        "/request/followup/external_key",
        json!("shared-key"),
    );
    let campaign_reply = app.create_campaign(&campaign_again).await.ok();
    let follow_up_reply = app.create_follow_up(&follow_up_again).await.ok();

    assert_eq!(campaign_reply["response"]["status"], "created");
    assert_eq!(
        campaign_reply["response"]["campaign"]["tenant_id"],
        other.as_str()
    );
    assert_eq!(follow_up_reply["response"]["status"], "created");
    assert_eq!(
        follow_up_reply["response"]["followup"]["tenant_id"],
        other.as_str()
    );
}
