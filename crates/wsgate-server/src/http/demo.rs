//! The try-it page (`server.demo_page`): a browser session on the gateway's own
//! WebSocket, for newcomers and demos.
//!
//! HTML, JavaScript and CSS built into the binary (no external assets): `GET /` is the
//! page, `GET /demo/app.js` and `GET /demo/style.css` its script (an ES module) and style,
//! and `GET /demo/wsgate-client.js` the official client `@wsgate/client` the script
//! imports, which speaks the protocol. That bundle is a committed copy of
//! `clients/js/dist/index.js` (`npm run embed` in `clients/js` refreshes it, and a test
//! there fails when it is stale), so that cargo never needs npm. The page learns
//! `server.ws_path` and `auth.mode` from two `<meta>` tags rendered (HTML-escaped) into it
//! when the router is built. Every response carries a
//! strict Content-Security-Policy: only this origin's script and style, no inline code,
//! connections only to this origin and WebSockets; and `Referrer-Policy: no-referrer`,
//! because the page URL may hold a token.

use axum::Router;
use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::settings::Settings;

const INDEX_HTML: &str = include_str!("demo/index.html");
const APP_JS: &str = include_str!("demo/app.js");
const STYLE_CSS: &str = include_str!("demo/style.css");
const CLIENT_JS: &str = include_str!("demo/wsgate-client.js");

/// Path of the page.
pub const PAGE_PATH: &str = "/";
/// Path of the page's script.
pub const SCRIPT_PATH: &str = "/demo/app.js";
/// Path of the page's style sheet.
pub const STYLE_PATH: &str = "/demo/style.css";
/// Path of the client bundle (`@wsgate/client`) the page's script imports.
pub const CLIENT_PATH: &str = "/demo/wsgate-client.js";

/// The Content-Security-Policy of the page and its assets.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self' ws: wss:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes when `server.demo_page` is on, else an empty router. A route whose
/// path equals `server.ws_path` is left out: the WebSocket endpoint wins.
pub fn routes<S>(settings: &Settings) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    let mut router = Router::new();
    if !settings.server.demo_page {
        return router;
    }
    let assets = [
        (
            PAGE_PATH,
            "text/html; charset=utf-8",
            "no-store",
            Bytes::from(render_page(settings)),
        ),
        (
            SCRIPT_PATH,
            "text/javascript; charset=utf-8",
            "no-cache",
            Bytes::from_static(APP_JS.as_bytes()),
        ),
        (
            STYLE_PATH,
            "text/css; charset=utf-8",
            "no-cache",
            Bytes::from_static(STYLE_CSS.as_bytes()),
        ),
        (
            CLIENT_PATH,
            "text/javascript; charset=utf-8",
            "no-cache",
            Bytes::from_static(CLIENT_JS.as_bytes()),
        ),
    ];
    for (path, content_type, cache_control, body) in assets {
        if path == settings.server.ws_path {
            continue;
        }
        router = router.route(
            path,
            get(move || {
                let body = body.clone();
                async move { asset(content_type, cache_control, body) }
            }),
        );
    }
    router
}

fn asset(content_type: &'static str, cache_control: &'static str, body: Bytes) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache_control),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

/// The page with `server.ws_path` and `auth.mode` filled in.
pub fn render_page(settings: &Settings) -> String {
    INDEX_HTML
        .replace("{{WS_PATH}}", &escape_html(&settings.server.ws_path))
        .replace("{{AUTH_MODE}}", settings.auth.mode.into())
}

/// Escapes text for an HTML text node or a double-quoted attribute value.
fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {

    use axum::body::Body;
    use http::{Request, StatusCode};
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;

    use super::*;
    use crate::settings::AuthMode;

    /// The gateway's whole router, as `run` builds it.
    async fn gateway_router(settings: Settings) -> Router {
        crate::start(settings.build().unwrap())
            .await
            .unwrap()
            .router()
    }

    async fn get(router: &Router, path: &str) -> (StatusCode, http::HeaderMap, String) {
        let request = Request::get(path).body(Body::empty()).unwrap();
        let response = router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, headers, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn page_and_assets_are_served_with_a_strict_csp() {
        let router = gateway_router(Settings::default()).await;
        let (status, headers, body) = get(&router, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
        assert_eq!(headers["referrer-policy"], "no-referrer");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            body.contains(r#"<meta name="wsgate-ws-path" content="/ws">"#),
            "{body}"
        );
        assert!(body.contains(r#"<meta name="wsgate-auth" content="none">"#));
        assert!(body.contains(SCRIPT_PATH) && body.contains(STYLE_PATH));
        // The script is an ES module (it imports the client bundle).
        assert!(
            body.contains(r#"<script type="module" src="/demo/app.js"></script>"#),
            "{body}"
        );
        assert!(!body.contains("{{"), "every placeholder is filled");
        // No inline script or style: the CSP would block them.
        assert!(!body.contains("<script>") && !body.contains("<style") && !body.contains("style="));

        let (status, headers, body) = get(&router, SCRIPT_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
        assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
        // The page's script speaks the protocol only through the client it imports, from
        // this origin (the CSP allows no other).
        assert!(
            body.contains(r#"import { Client } from "./wsgate-client.js";"#),
            "{body}"
        );
        assert!(!body.contains("new WebSocket"));

        let (status, headers, body) = get(&router, CLIENT_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/javascript; charset=utf-8");
        assert_eq!(headers["content-security-policy"], CONTENT_SECURITY_POLICY);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-cache");
        // The ESM bundle of `@wsgate/client`: it offers the subprotocol and exports Client.
        assert!(body.contains("wsgate.v1"));
        assert!(
            body.contains("export{") && body.contains(" as Client"),
            "{body}"
        );
        assert!(!body.contains("import "), "the bundle has no dependencies");

        let (status, headers, _) = get(&router, STYLE_PATH).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["content-type"], "text/css; charset=utf-8");

        let (status, _, body) = get(&router, "/demo/nope.js").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(body.contains("not_found"));
    }

    #[tokio::test]
    async fn off_means_404() {
        let mut settings = Settings::default();
        settings.server.demo_page = false;
        let router = gateway_router(settings).await;
        for path in [PAGE_PATH, SCRIPT_PATH, STYLE_PATH, CLIENT_PATH] {
            let (status, headers, body) = get(&router, path).await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
            assert_eq!(headers["content-type"], "application/json");
            assert!(body.contains("not_found"));
        }
        let (status, _, _) = get(&router, "/healthz").await;
        assert_eq!(status, StatusCode::OK);
    }

    #[tokio::test]
    async fn ws_path_is_escaped_and_wins_over_the_page() {
        let mut settings = Settings::default();
        settings.server.ws_path = r#"/a"b<c>&'d"#.into();
        settings.auth.mode = AuthMode::Jwt;
        settings.auth.jwt.secret = Some("0123456789abcdef0123456789abcdef".into());
        let page = render_page(&settings);
        assert!(
            page.contains(r#"content="/a&quot;b&lt;c&gt;&amp;&#39;d""#),
            "{page}"
        );
        assert!(page.contains(r#"<meta name="wsgate-auth" content="jwt">"#));

        // ws_path "/" takes the page's path; the assets are still served.
        let mut settings = Settings::default();
        settings.server.ws_path = "/".into();
        let router = gateway_router(settings).await;
        let (status, _, body) = get(&router, "/").await;
        assert_ne!(
            status,
            StatusCode::OK,
            "the preflight answers, not the page"
        );
        assert!(!body.contains("<html"));
        for path in [SCRIPT_PATH, STYLE_PATH, CLIENT_PATH] {
            let (status, _, _) = get(&router, path).await;
            assert_eq!(status, StatusCode::OK, "{path}");
        }
    }
}
