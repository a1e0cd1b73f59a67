//! `GET /health` and `GET /ready`.

use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn health_answers_ok() {
    let app = spawn_app().await;

    assert_eq!(app.health().await.ok(), json!({"status": "ok"}));
}

#[tokio::test]
async fn ready_answers_ready_and_names_the_backend() {
    let app = spawn_app().await;

    assert_eq!(
        app.ready().await.ok(),
        json!({"status": "ready", "backend": app.backend})
    );
}
