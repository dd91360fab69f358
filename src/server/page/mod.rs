//! The status page: the fleet at a glance (`GET /`), a unit's own page (`GET /unit`), its
//! comparison with the cluster (`GET /unit/inspect`), "Sync now" (`POST /ui/sync`, streamed),
//! live updates (`GET /ui/events`, server-sent events) and the embedded stylesheet and script.
//!
//! Access: over the socket, whoever may open it; over TCP, the API's bearer token, either as
//! `Authorization: Bearer` or as a session cookie that the login form sets after checking the
//! token (an HMAC of the token and the cookie's expiry: a rotated token ends every session).
//! A sync from the page also carries a CSRF token (an HMAC of the API token, or of a key of
//! this process over the socket) in a header a cross-site form cannot set, and is refused when
//! the browser says the request came from another site.

mod html;

use std::sync::OnceLock;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use serde::Deserialize;
use tokio::sync::mpsc;

use super::{Api, SyncBody, Via, authorize, error, read_body};
use crate::fleet::UnitId;

/// The name of the session cookie.
const COOKIE: &str = "flotilla_session";
/// How long a login lasts.
const SESSION: Duration = Duration::from_secs(12 * 3600);
/// The header a page's requests carry the CSRF token in.
const CSRF_HEADER: &str = "x-flotilla-csrf";
/// The header that asks a page for its live part only.
const FRAGMENT_HEADER: &str = "x-flotilla-fragment";
/// The page's own origin for everything; no inline script or style.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

const CSS: &str = include_str!("page.css");
const JS: &str = include_str!("page.js");

/// The page's routes, for the main TCP listener and the socket.
pub(super) fn routes() -> Router<Api> {
    Router::new()
        .route("/", any(fleet))
        .route("/unit", any(unit))
        .route("/unit/inspect", any(inspect))
        .route("/ui/sync", any(sync))
        .route("/ui/events", any(events))
        .route("/ui/login", any(login))
        .route("/ui/logout", any(logout))
        .route("/ui/page.css", any(|m: Method| asset(m, CSS, "text/css")))
        .route(
            "/ui/page.js",
            any(|m: Method| asset(m, JS, "text/javascript")),
        )
}

/// How a request was let in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Socket,
    /// `Authorization: Bearer`: not a browser's ambient credential, no CSRF token needed.
    Bearer,
    Cookie,
}

/// Who the request is, or the answer to give instead: the login form for a page, a 401 for
/// the rest.
async fn access(api: &Api, headers: &HeaderMap, page: bool) -> Result<Access, Response> {
    if api.via == Via::Socket {
        if !loopback_host(headers) {
            return Err(error(
                StatusCode::MISDIRECTED_REQUEST,
                "over the socket, the page answers to localhost only (forward it to a local port)",
            ));
        }
        return Ok(Access::Socket);
    }
    if headers.contains_key(header::AUTHORIZATION) {
        return match authorize(headers, api).await {
            Ok(()) => Ok(Access::Bearer),
            Err(why) => Err(error(StatusCode::UNAUTHORIZED, &why)),
        };
    }
    let token = match token(api).await {
        Ok(t) => t,
        Err(why) => return Err(refused(page, &why)),
    };
    match cookie(headers, COOKIE) {
        Some(value) if session_valid(&token, value, SystemTime::now()) => Ok(Access::Cookie),
        Some(_) => Err(refused(
            page,
            "the session has expired or the token changed",
        )),
        None => Err(refused(page, "the API token is required")),
    }
}

/// [`access`] for a `GET` route: another method is a 404, as for an unknown path.
async fn get_access(
    api: &Api,
    method: &Method,
    headers: &HeaderMap,
    page: bool,
) -> Result<Access, Response> {
    if method != Method::GET {
        return Err(super::not_found());
    }
    access(api, headers, page).await
}

fn refused(page: bool, why: &str) -> Response {
    if page {
        with_headers(StatusCode::UNAUTHORIZED, html::login(why))
    } else {
        error(StatusCode::UNAUTHORIZED, why)
    }
}

/// The API token, as `authorize` reads it (on each request: a rotated token works at once).
async fn token(api: &Api) -> Result<Vec<u8>, String> {
    let Some(file) = api.agent.snapshot().config.listen.token_file.clone() else {
        return Err(
            "the page is off over TCP: listen.token_file is not set (use the socket)".into(),
        );
    };
    let token = tokio::fs::read(&file).await.map_err(|e| {
        tracing::error!(file = %file.display(), error = %e, "cannot read the API token file");
        "the API token cannot be read".to_string()
    })?;
    let token = token.trim_ascii();
    if token.is_empty() {
        return Err("the API token file is empty".into());
    }
    Ok(token.to_vec())
}

fn mac(key: &[u8], message: &str) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    mac.update(message.as_bytes());
    crate::source::hex(&mac.finalize().into_bytes())
}

/// A session cookie's value: `<expiry>.<hmac(token, expiry)>`.
fn session_value(token: &[u8], expires: u64) -> String {
    format!(
        "{expires}.{}",
        mac(token, &format!("flotilla session until {expires}"))
    )
}

fn session_valid(token: &[u8], value: &str, now: SystemTime) -> bool {
    let Some((expires, _)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires) = expires.parse::<u64>() else {
        return false;
    };
    let now = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    expires > now
        && super::webhook::same_secret(value.as_bytes(), session_value(token, expires).as_bytes())
}

/// A cookie's value from the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// The CSRF token of this agent's pages: from the API token, or (no token: the socket) from a
/// random key of this process; `None` (no sync from the page) if neither can be had.
async fn csrf(api: &Api) -> Option<String> {
    static PROCESS_KEY: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let key = match token(api).await {
        Ok(t) if api.via == Via::Tcp => t,
        _ => PROCESS_KEY
            .get_or_init(|| {
                let mut key = vec![0u8; 32];
                std::fs::File::open("/dev/urandom")
                    .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut key))
                    .map_err(|e| tracing::error!(error = %e, "no random key for the page's CSRF tokens; Sync now is off on the socket"))
                    .ok()
                    .map(|()| key)
            })
            .clone()?,
    };
    Some(mac(&key, "flotilla csrf"))
}

/// Over the socket (no token), the page answers only to a loopback name: a web page that
/// rebinds its own name to the forwarded socket's port is not let in.
fn loopback_host(headers: &HeaderMap) -> bool {
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("localhost");
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    matches!(name, "localhost" | "127.0.0.1" | "::1") || name.ends_with(".localhost")
}

/// Whether the browser says the request came from another site: `Sec-Fetch-Site` where it is
/// sent (every current browser), else an `Origin` naming another host than the one asked.
pub(super) fn cross_site(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return !matches!(site.to_str(), Ok("same-origin" | "none"));
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    match (origin, host) {
        (None, _) => false,
        (Some(origin), Some(host)) => {
            let authority = origin.split_once("://").map_or(origin, |(_, a)| a);
            !authority.eq_ignore_ascii_case(host)
        }
        (Some(_), None) => true,
    }
}

/// Security headers on every page answer.
fn with_headers(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            // Not `no-referrer`: that sends `Origin: null` with the page's own forms.
            (header::REFERRER_POLICY, "same-origin"),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_FRAME_OPTIONS, "DENY"),
        ],
        body,
    )
        .into_response()
}

async fn asset(method: Method, body: &'static str, kind: &'static str) -> Response {
    if method != Method::GET {
        return super::not_found();
    }
    (
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The fleet page's filters, also set by its script.
#[derive(Deserialize, Default)]
pub(super) struct Filters {
    #[serde(default)]
    pub tenant: String,
    #[serde(default)]
    pub result: String,
    #[serde(default)]
    pub q: String,
}

async fn fleet(
    State(api): State<Api>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let access = match get_access(&api, &method, &headers, true).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let snapshot = api.agent.snapshot();
    let filters: Filters = query
        .and_then(|q| serde_urlencoded::from_str(&q).ok())
        .unwrap_or_default();
    let live = html::fleet_live(&snapshot, &filters);
    if headers.contains_key(FRAGMENT_HEADER) {
        return with_headers(StatusCode::OK, live);
    }
    let page = html::Page {
        title: "fleet",
        csrf: &csrf(&api).await.unwrap_or_default(),
        logout: access == Access::Cookie,
        snapshot: &snapshot,
    };
    with_headers(StatusCode::OK, html::fleet(&page, &filters, &live))
}

/// A unit, as the sync API names it: `tenant` and `app`, or `app` alone for the infra units.
#[derive(Deserialize)]
struct UnitQuery {
    tenant: Option<String>,
    app: String,
}

impl UnitQuery {
    fn id(&self) -> UnitId {
        match &self.tenant {
            Some(t) if !t.is_empty() => UnitId::app(t, &self.app),
            _ => UnitId::infra_named(&self.app),
        }
    }
}

/// The unit a page asks for, if this cluster has it; else the status and message to answer.
fn placed(api: &Api, query: Option<String>) -> Result<UnitId, (StatusCode, String)> {
    let Some(query) = query.and_then(|q| serde_urlencoded::from_str::<UnitQuery>(&q).ok()) else {
        return Err((
            StatusCode::BAD_REQUEST,
            "name the unit: ?tenant=<tenant>&app=<app>, or ?app=<infra unit>".into(),
        ));
    };
    let id = query.id();
    if !api.agent.snapshot().status.plans.contains_key(&id) {
        return Err((
            StatusCode::NOT_FOUND,
            format!("no unit {} on this cluster", crate::agent::unit_name(&id)),
        ));
    }
    Ok(id)
}

async fn unit(
    State(api): State<Api>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let access = match get_access(&api, &method, &headers, true).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let id = match placed(&api, query) {
        Ok(id) => id,
        Err((status, why)) => return error(status, &why),
    };
    let snapshot = api.agent.snapshot();
    let live = html::unit_live(&snapshot, &id);
    if headers.contains_key(FRAGMENT_HEADER) {
        return with_headers(StatusCode::OK, live);
    }
    let page = html::Page {
        title: &crate::agent::unit_name(&id),
        csrf: &csrf(&api).await.unwrap_or_default(),
        logout: access == Access::Cookie,
        snapshot: &snapshot,
    };
    with_headers(StatusCode::OK, html::unit(&page, &id, &live))
}

/// The unit compared with the cluster now: an HTML fragment the unit page loads.
async fn inspect(
    State(api): State<Api>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    if let Err(r) = get_access(&api, &method, &headers, false).await {
        return r;
    }
    let id = match placed(&api, query) {
        Ok(id) => id,
        Err((status, why)) => return error(status, &why),
    };
    if !api.agent.snapshot().leader {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this replica is not the leader: it does not compare units with the cluster",
        );
    }
    let body = match api.agent.inspect(id).await {
        Ok(inspection) => html::inspection(&inspection),
        Err(why) => html::inspection_failed(&why),
    };
    with_headers(StatusCode::OK, body)
}

/// "Sync now": the API's sync, waited for and streamed, behind the CSRF check.
async fn sync(State(api): State<Api>, req: Request) -> Response {
    let access = match access(&api, req.headers(), false).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    if req.method() != Method::POST {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    }
    if cross_site(req.headers()) {
        return error(StatusCode::FORBIDDEN, "a cross-site request; refused");
    }
    if access != Access::Bearer {
        let given = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let Some(want) = csrf(&api).await else {
            return error(
                StatusCode::FORBIDDEN,
                "Sync now is off: no CSRF key (see the log)",
            );
        };
        if !super::webhook::same_secret(given.as_bytes(), want.as_bytes()) {
            return error(
                StatusCode::FORBIDDEN,
                "the page's CSRF token is missing or wrong; reload the page",
            );
        }
    }
    let body = match read_body(req, super::MAX_API_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let mut ask: SyncBody = match serde_json::from_slice(&body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("bad sync request: {e}")),
    };
    ask.wait = true;
    // With sharding, another replica may hold the tenant's shard: the sync goes there (asked
    // with the agent's own token; nothing of the browser's request is passed on).
    if api.agent.snapshot().ownership.is_some() {
        let body = serde_json::json!({"tenant": ask.tenant, "app": ask.app, "wait": true});
        let body = bytes::Bytes::from(serde_json::to_vec(&body).unwrap_or_default());
        return super::peers::sync(&api, &axum::http::HeaderMap::new(), body, ask).await;
    }
    super::queue_sync(&api, ask)
}

/// Server-sent events: `status` each time the agent's state changes (at most once a second),
/// a comment every 15 s so that a closed page is noticed; the stream ends after 10 minutes
/// (the browser reconnects).
async fn events(State(api): State<Api>, method: Method, headers: HeaderMap) -> Response {
    if let Err(r) = get_access(&api, &method, &headers, false).await {
        return r;
    }
    // Each open page holds a connection: a few at most, so that webhooks and the API always
    // find one (a page turned away polls instead).
    static STREAMS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(16);
    let Ok(stream) = STREAMS.try_acquire() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many pages are open; this one polls instead",
        );
    };
    let (tx, rx) = mpsc::unbounded_channel::<Bytes>();
    let mut state = api.agent.subscribe();
    state.mark_unchanged();
    tokio::spawn(tracing::Instrument::in_current_span(async move {
        let _stream = stream;
        let end = tokio::time::Instant::now() + Duration::from_secs(600);
        if tx
            .send(Bytes::from_static(
                b"retry: 3000

",
            ))
            .is_err()
        {
            return;
        }
        loop {
            let frame = tokio::select! {
                changed = state.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    state.mark_unchanged();
                    Bytes::from_static(b"event: status\ndata: changed\n\n")
                }
                _ = tokio::time::sleep(Duration::from_secs(15)) => Bytes::from_static(b": alive\n\n"),
                _ = tokio::time::sleep_until(end) => return,
            };
            if tx.send(frame).is_err() {
                return;
            }
            // At most one update a second, however busy the agent is.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }));
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/event-stream"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        axum::body::Body::new(super::Streamed { rx, encode: |b| b }),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LoginForm {
    token: String,
    #[serde(default)]
    next: String,
}

/// The login form's answer: a session cookie for the right token.
async fn login(State(api): State<Api>, req: Request) -> Response {
    if req.method() != Method::POST {
        return super::not_found();
    }
    if api.via != Via::Tcp {
        return redirect("/", None);
    }
    if cross_site(req.headers()) {
        return error(StatusCode::FORBIDDEN, "a cross-site request; refused");
    }
    let https = req
        .headers()
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let body = match read_body(req, 16 * 1024).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let Ok(form) = serde_urlencoded::from_bytes::<LoginForm>(&body) else {
        return with_headers(
            StatusCode::BAD_REQUEST,
            html::login("the form was not sent whole"),
        );
    };
    let token = match token(&api).await {
        Ok(t) => t,
        Err(why) => return with_headers(StatusCode::UNAUTHORIZED, html::login(&why)),
    };
    if !super::webhook::same_secret(form.token.trim().as_bytes(), &token) {
        tracing::warn!("status page: a login with a wrong token");
        // Guesses come one a second per connection.
        tokio::time::sleep(Duration::from_secs(1)).await;
        return with_headers(
            StatusCode::UNAUTHORIZED,
            html::login("that is not the API token"),
        );
    }
    let expires = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + SESSION.as_secs();
    // `Lax`: a link to the page from elsewhere opens it logged in; what changes anything needs
    // the CSRF header besides. `Secure` behind a TLS-terminating proxy that says so.
    let secure = if https { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        session_value(&token, expires),
        SESSION.as_secs()
    );
    redirect(local_page(&form.next), Some(&cookie))
}

async fn logout(State(api): State<Api>, method: Method, headers: HeaderMap) -> Response {
    if method != Method::POST {
        return super::not_found();
    }
    if cross_site(&headers) {
        return error(StatusCode::FORBIDDEN, "a cross-site request; refused");
    }
    let _ = api;
    redirect(
        "/",
        Some(&format!(
            "{COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax"
        )),
    )
}

/// Where a login may send the browser back to: one of this page's own paths, else `/`.
fn local_page(next: &str) -> &str {
    let path = next.split('?').next().unwrap_or("");
    let safe = matches!(path, "/" | "/unit")
        && next
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '\\' && c != '"');
    if safe { next } else { "/" }
}

fn redirect(to: &str, cookie: Option<&str>) -> Response {
    let mut r = (StatusCode::SEE_OTHER, [(header::CACHE_CONTROL, "no-store")]).into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    if let Some(c) = cookie.and_then(|c| HeaderValue::from_str(c).ok()) {
        r.headers_mut().insert(header::SET_COOKIE, c);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_expire_and_end_with_the_token() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        let value = session_value(b"token", 2_000);
        assert!(session_valid(b"token", &value, now));
        assert!(!session_valid(b"other", &value, now));
        assert!(!session_valid(
            b"token",
            &value,
            SystemTime::UNIX_EPOCH + Duration::from_secs(2_000)
        ));
        // The expiry is signed: pushing it later breaks the signature.
        let (_, sig) = value.split_once('.').unwrap();
        assert!(!session_valid(b"token", &format!("9999.{sig}"), now));
        assert!(!session_valid(b"token", "garbage", now));
    }

    #[test]
    fn cross_site_requests_are_told_apart() {
        let headers = |pairs: &[(&'static str, &'static str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, HeaderValue::from_static(v));
            }
            h
        };
        assert!(!cross_site(&headers(&[])));
        // The browser's word wins over Origin (a proxy may rewrite Host).
        assert!(!cross_site(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "null"),
            ("host", "internal:8080")
        ])));
        assert!(!cross_site(&headers(&[("sec-fetch-site", "same-origin")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "cross-site")])));
        assert!(cross_site(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!cross_site(&headers(&[
            ("origin", "http://127.0.0.1:8080"),
            ("host", "127.0.0.1:8080")
        ])));
        assert!(cross_site(&headers(&[
            ("origin", "https://evil.example"),
            ("host", "127.0.0.1:8080")
        ])));
    }

    #[test]
    fn a_login_returns_to_this_page_only() {
        assert_eq!(local_page("/unit?tenant=ai&app=x"), "/unit?tenant=ai&app=x");
        assert_eq!(local_page("/?result=failed"), "/?result=failed");
        for bad in [
            "//evil.example",
            "/\t/evil.example",
            "https://evil.example",
            "/\\evil",
            "/x",
        ] {
            assert_eq!(local_page(bad), "/", "{bad}");
        }
    }

    #[test]
    fn the_socket_answers_to_loopback_names_only() {
        let host = |h: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::HOST, HeaderValue::from_static(h));
            m
        };
        for ok in [
            "localhost",
            "localhost:8080",
            "127.0.0.1:9",
            "[::1]:8080",
            "x.localhost",
        ] {
            assert!(loopback_host(&host(ok)), "{ok}");
        }
        for bad in ["evil.example:8080", "localhost.evil.example", "10.0.0.1"] {
            assert!(!loopback_host(&host(bad)), "{bad}");
        }
        assert!(loopback_host(&HeaderMap::new()));
    }

    #[test]
    fn cookies_are_found_by_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; flotilla_session=2.abc; b=3"),
        );
        assert_eq!(cookie(&h, COOKIE), Some("2.abc"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
