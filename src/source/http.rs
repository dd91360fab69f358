//! GET over HTTP(S) for chart repositories and OCI registries, on the hyper and rustls stack
//! kube's client already brings (no second HTTP or TLS library). Redirects are followed, and
//! the `Authorization` header is computed afresh for each hop, so a credential never follows a
//! redirect to a host it is not bound to.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper::header::{HeaderMap, HeaderValue, LOCATION};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The most redirects one request follows.
const MAX_REDIRECTS: usize = 5;

/// An answer, its body read whole (within the caller's cap).
pub(crate) struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Response {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Computes the `Authorization` header for a URL, or none.
pub(crate) type Auth<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

pub(crate) struct Http {
    client: Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>, String>,
    timeout: Duration,
}

impl Http {
    /// A client trusting the system's root certificates; `timeout` bounds each request, body
    /// included.
    pub(crate) fn new(timeout: Duration, connect_timeout: Duration) -> Http {
        let client = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map_err(|e| format!("no root certificates for HTTPS: {e}"))
            .map(|b| {
                let mut http = HttpConnector::new();
                http.enforce_http(false);
                http.set_connect_timeout(Some(connect_timeout));
                let connector = b.https_or_http().enable_http1().wrap_connector(http);
                Client::builder(TokioExecutor::new())
                    .pool_idle_timeout(Duration::from_secs(30))
                    .build(connector)
            });
        Http { client, timeout }
    }

    /// GETs `url` with `headers`, following redirects; a body over `max` bytes is an error.
    pub(crate) async fn get(
        &self,
        url: &str,
        headers: &[(&str, String)],
        auth: Auth<'_>,
        max: usize,
    ) -> Result<Response, String> {
        match tokio::time::timeout(self.timeout, self.get_inner(url, headers, auth, max)).await {
            Ok(result) => result,
            Err(_) => Err(format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            )),
        }
    }

    async fn get_inner(
        &self,
        url: &str,
        headers: &[(&str, String)],
        auth: Auth<'_>,
        max: usize,
    ) -> Result<Response, String> {
        let client = self.client.as_ref().map_err(Clone::clone)?;
        let mut url = url.to_string();
        for _ in 0..=MAX_REDIRECTS {
            let mut request = hyper::Request::get(&url);
            for (name, value) in headers {
                request = request.header(*name, value);
            }
            if let Some(value) = auth(&url) {
                let mut value = HeaderValue::from_str(&value)
                    .map_err(|_| "the credentials hold characters a header cannot".to_string())?;
                value.set_sensitive(true);
                request = request.header(hyper::header::AUTHORIZATION, value);
            }
            let request = request
                .header(hyper::header::USER_AGENT, "flotilla")
                .body(Empty::new())
                .map_err(|e| format!("bad request: {e}"))?;
            let response = client.request(request).await.map_err(|e| {
                use std::error::Error as _;
                let mut message = e.to_string();
                let mut source = e.source();
                while let Some(s) = source {
                    message = format!("{message}: {s}");
                    source = s.source();
                }
                message
            })?;
            let status = response.status().as_u16();
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                let next = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or("a redirect without a Location")?;
                let from_https = url.starts_with("https://");
                url = join_url(&url, next);
                if !url.starts_with("https://") && !url.starts_with("http://") {
                    return Err(format!("redirected to {url:?}, which is not HTTP(S)"));
                }
                if from_https && !url.starts_with("https://") {
                    return Err(format!("redirected from HTTPS to {url:?}; refused"));
                }
                continue;
            }
            let headers = response.headers().clone();
            if let Some(length) = headers
                .get(hyper::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                && length > max as u64
            {
                return Err(format!(
                    "the answer is {length} bytes, over the {max} allowed"
                ));
            }
            let mut body = response.into_body();
            let mut out = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading the answer: {e}"))?;
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > max {
                        return Err(format!("the answer is over the {max} bytes allowed"));
                    }
                    out.extend_from_slice(&data);
                }
            }
            return Ok(Response {
                status,
                headers,
                body: out,
            });
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }
}

/// `reference` resolved against `base` (an absolute URL, an absolute path, or a relative one).
pub(crate) fn join_url(base: &str, reference: &str) -> String {
    if reference.contains("://") {
        return reference.to_string();
    }
    let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
    let authority = rest.split('/').next().unwrap_or_default();
    if let Some(path) = reference.strip_prefix('/') {
        return format!("{scheme}://{authority}/{path}");
    }
    // Relative: beside the last segment of the base's path (its query dropped).
    let path = rest.split(['?', '#']).next().unwrap_or_default();
    let dir = path.rsplit_once('/').map_or(path, |(d, _)| d);
    let dir = if dir.is_empty() { authority } else { dir };
    format!("{scheme}://{dir}/{reference}")
}

#[cfg(test)]
mod tests {
    use super::join_url;

    #[test]
    fn urls_are_joined_as_a_browser_would() {
        let base = "https://charts.example.com/stable/index.yaml";
        assert_eq!(
            join_url(base, "podinfo-6.5.1.tgz"),
            "https://charts.example.com/stable/podinfo-6.5.1.tgz"
        );
        assert_eq!(
            join_url(base, "/other/x.tgz"),
            "https://charts.example.com/other/x.tgz"
        );
        assert_eq!(
            join_url(base, "https://cdn.example.net/x.tgz"),
            "https://cdn.example.net/x.tgz"
        );
        assert_eq!(
            join_url("http://127.0.0.1:5000", "x.tgz"),
            "http://127.0.0.1:5000/x.tgz"
        );
    }
}
