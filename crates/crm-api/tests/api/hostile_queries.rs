//! Hostile query strings and path segments on every route the OpenAPI document declares:
//! each is refused with a JSON body whose `error` word the operation documents, and a
//! query parameter the route does not know is a `validation_error` naming it.

use reqwest::Method;
use serde_json::Value;

use crate::helpers::{TestApp, new_id, spawn_app};

/// Query strings no route accepts: a parameter it does not know, text that does not
/// decode, a known parameter with a value out of range.
const HOSTILE_QUERIES: [&str; 12] = [
    "stauts=sent",
    "%FF=1",
    "x=%ZZ",
    "a%00b=1",
    "=",
    "tenant_id=%C0%AF",
    "tenant_id=acme&limit=1001",
    "tenant_id=acme&limit=0",
    "tenant_id=acme&limit=-1",
    "tenant_id=acme&limit=1e3",
    "tenant_id=acme&cursor=%FF",
    "tenant_id=acme&correlation_id=%",
];

/// Every (method, path template, operation) of the document.
fn operations(document: &Value) -> Vec<(Method, String, Value)> {
    let mut operations = Vec::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("a path item") {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).expect("a method");
            operations.push((method, path.clone(), operation.clone()));
        }
    }
    operations
}

/// The template with each path parameter replaced by `value(name)`.
fn fill(template: &str, value: impl Fn(&str) -> String) -> String {
    let mut path = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').expect("a closed parameter") + start;
        path.push_str(&rest[..start]);
        path.push_str(&value(&rest[start + 1..end]));
        rest = &rest[end + 1..];
    }
    path.push_str(rest);
    path
}

/// A value of path parameter `name` that names nothing stored but is well formed.
fn plain_value(name: &str) -> String {
    match name {
        "tenant_id" => "acme".to_owned(),
        "phone_e164" => "%2B5511999998888".to_owned(),
        _ => new_id(),
    }
}

/// Sends `method url` raw (no body) and checks the reply is an error that `operation`
/// documents, with a JSON body carrying a word it lists for that status.
async fn assert_documented_refusal(
    app: &TestApp,
    method: &Method,
    url: &str,
    operation: &Value,
) -> Value {
    let response = app
        .client
        .request(method.clone(), url)
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap_or_else(|error| panic!("{method} {url}: {error}"));
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    assert!(
        (400..500).contains(&status),
        "{method} {url} answered {status}: {text}"
    );
    let body: Value = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {url} answered {status} with no JSON body: {text:?}"));
    let word = body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {url}: no error word in {body}"));
    let documented = operation["responses"][status.to_string()]["description"]
        .as_str()
        .unwrap_or_else(|| panic!("{method} {url}: status {status} is not documented"));
    assert!(
        documented.contains(&format!("`{word}`")),
        "{method} {url}: {word} is not among the documented words of {status}: {documented}"
    );
    body
}

#[tokio::test]
async fn every_route_refuses_hostile_query_strings_with_a_documented_json_error() {
    let app = spawn_app().await;
    let document = app.openapi().await.ok();
    for (method, template, operation) in operations(&document) {
        let path = fill(&template, plain_value);
        for query in HOSTILE_QUERIES {
            let url = format!("{}{path}?{query}", app.address);
            assert_documented_refusal(&app, &method, &url, &operation).await;
        }
        let url = format!("{}{path}?stauts=sent", app.address);
        let body = assert_documented_refusal(&app, &method, &url, &operation).await;
        assert_eq!(
            body["details"][0]["parameter"], "stauts",
            "{method} {url}: {body}"
        );
    }
}

#[tokio::test]
async fn every_path_parameter_that_does_not_decode_is_refused_with_a_documented_json_error() {
    let app = spawn_app().await;
    let document = app.openapi().await.ok();
    for (method, template, operation) in operations(&document) {
        if !template.contains('{') {
            continue;
        }
        for hostile in ["%FF", "%C0%AF", "a%00b", "%ZZ"] {
            let path = fill(&template, |_| hostile.to_owned());
            let query = if operation["parameters"]
                .as_array()
                .is_some_and(|parameters| {
                    parameters
                        .iter()
                        .any(|p| p["name"] == "tenant_id" && p["in"] == "query")
                }) {
                "?tenant_id=acme"
            } else {
                ""
            };
            let url = format!("{}{path}{query}", app.address);
            assert_documented_refusal(&app, &method, &url, &operation).await;
        }
    }
}
