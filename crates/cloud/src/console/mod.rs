//! The operator's web console (docs/console.md): devices and general nodes
//! with their state, NAT, transport and tunnels; add, disable, revoke and
//! reset devices; the access policy. Served by the cloud on
//! `console_listen`, over HTTPS with the cloud's server certificate, or
//! over plain HTTP on loopback behind a reverse proxy (`console_tls =
//! false`).
//!
//! Administrators (`cyphonic cloud admin add`) log in with a password
//! (argon2id). A session is a random 256-bit token in a cookie (`HttpOnly`,
//! `Secure`, `SameSite=Strict`); the database keeps only its SHA-256. Every
//! state-changing request is a POST that must carry the session's CSRF
//! token (the login form a token of its own, double-submitted in a
//! cookie), and cross-site requests (`Sec-Fetch-Site: cross-site`) are
//! refused outright.

pub mod pages;
pub mod store;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::extract::{Form, Path as UrlPath, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::admin::{self, AdminError};
use crate::config::CloudConfig;
use crate::nms::Registration;
use crate::store::{Store, StoreError};
use pages::{DeviceView, Online};

/// How long a console session lasts.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Failed logins from one address within [`LOGIN_WINDOW`] before it must
/// wait for the window to pass.
pub const MAX_LOGIN_FAILURES: u32 = 10;
pub const LOGIN_WINDOW: Duration = Duration::from_secs(600);
/// Password checks (argon2id, 19 MiB each) at once.
const PASSWORD_CHECKS: usize = 2;
/// Addresses the login limiter remembers; the oldest windows go first.
const LIMITER_ENTRIES: usize = 4096;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// A TLS handshake and the request head must arrive within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Form bodies larger than this are refused (the policy document is the
/// largest form).
const MAX_FORM_BYTES: usize = 256 * 1024;

const SESSION_COOKIE: &str = "__Host-cyphonic-session";
const LOGIN_COOKIE: &str = "__Host-cyphonic-login";

/// Asks the NMS of this process for its registrations.
pub type NmsView = mpsc::Sender<oneshot::Sender<Vec<(String, Registration)>>>;

/// The console's shared state.
pub struct Console {
    store: Store,
    cfg: Arc<CloudConfig>,
    nms: Option<NmsView>,
    checks: Semaphore,
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Console {
    pub fn new(store: Store, cfg: Arc<CloudConfig>, nms: Option<NmsView>) -> Arc<Console> {
        Arc::new(Console {
            store,
            cfg,
            nms,
            checks: Semaphore::new(PASSWORD_CHECKS),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Whether `ip` has used up its failed logins for now.
    fn login_blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures
            .get(&ip)
            .is_some_and(|(n, since)| *n >= MAX_LOGIN_FAILURES && now - *since < LOGIN_WINDOW)
    }

    fn login_failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.retain(|_, (_, since)| now - *since < LOGIN_WINDOW);
        if failures.len() >= LIMITER_ENTRIES && !failures.contains_key(&ip) {
            if let Some(oldest) = failures
                .iter()
                .min_by_key(|(_, (_, s))| *s)
                .map(|(k, _)| *k)
            {
                failures.remove(&oldest);
            }
        }
        failures.entry(ip).or_insert((0, now)).0 += 1;
    }

    /// The devices with what the NMS and the store know of each.
    async fn device_views(&self) -> Result<Vec<DeviceView>, StoreError> {
        let devices = self.store.devices().await?;
        let adapters: HashMap<String, String> = self
            .store
            .general_nodes(None)
            .await?
            .into_iter()
            .map(|g| (g.device.device_id, g.adapter_id))
            .collect();
        let last_seen = self.store.last_seen().await?;
        let certs = self.store.certificate_counts().await?;
        let mut online = self.registrations().await.unwrap_or_default();
        let now = Instant::now();
        Ok(devices
            .into_iter()
            .map(|device| {
                let (certs_good, certs_revoked) =
                    certs.get(&device.device_id).copied().unwrap_or((0, 0));
                DeviceView {
                    adapter: adapters.get(&device.device_id).cloned(),
                    online: online.remove(&device.fqdn).map(|r| Online {
                        nat: r.nat().as_str().into(),
                        transport: r.transport.as_str().into(),
                        observed: r.observed.to_string(),
                        seen_ago: now.saturating_duration_since(r.last_seen),
                        tunnels: r.tunnels,
                    }),
                    last_seen: last_seen.get(&device.device_id).copied(),
                    certs_good,
                    certs_revoked,
                    device,
                }
            })
            .collect())
    }

    /// Registered nodes by FQDN; `None` without an NMS in this process.
    async fn registrations(&self) -> Option<HashMap<String, Registration>> {
        let nms = self.nms.as_ref()?;
        let (tx, rx) = oneshot::channel();
        nms.send(tx).await.ok()?;
        Some(rx.await.ok()?.into_iter().collect())
    }
}

/// The console's routes.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(|| async { Redirect::to("/devices") }))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/devices", get(devices).post(add_device))
        .route("/devices/{id}", get(device))
        .route("/devices/{id}/{action}", post(device_action))
        .route("/policy", get(policy).post(set_policy))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found") })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES))
        .with_state(console)
}

/// Serves the console on `listener` until `stop` turns true: TLS with
/// `tls` when given, plain HTTP otherwise.
pub async fn serve(
    listener: TcpListener,
    console: Arc<Console>,
    tls: Option<Arc<rustls::ServerConfig>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let app = router(console);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = stop.wait_for(|s| *s) => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(error = %e, "console accept failed");
                    continue;
                }
            },
        };
        while conns.try_join_next().is_some() {}
        let app = app.clone().layer(axum::Extension(ClientAddr(peer)));
        let acceptor = acceptor.clone();
        conns.spawn(async move {
            let _permit = permit;
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE_TIMEOUT);
            let served = match acceptor {
                Some(acceptor) => {
                    let tls =
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                            Ok(Ok(tls)) => tls,
                            _ => return,
                        };
                    http.serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await
                }
                None => {
                    http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, error = %e, "console connection ended");
            }
        });
    }
}

/// The client's address, for the login limiter.
#[derive(Clone, Copy)]
struct ClientAddr(SocketAddr);

type Shared = State<Arc<Console>>;

/// A logged-in administrator.
struct Admin {
    name: String,
    csrf: String,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    hex::encode(bytes)
}

fn token_hash(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The value of cookie `name`.
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

fn set_cookie(name: &str, value: &str, max_age: Duration) -> HeaderValue {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={}",
        max_age.as_secs()
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Constant-time equality of two tokens.
fn same_token(a: &str, b: &str) -> bool {
    let differ = a
        .bytes()
        .zip(b.bytes())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(differ) == 0
}

/// A page with the console's security headers.
fn html(status: StatusCode, body: String) -> Response {
    let mut r = (status, body).into_response();
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn to_login() -> Response {
    Redirect::to("/login").into_response()
}

/// The administrator of the request's session cookie.
async fn admin_of(c: &Console, headers: &HeaderMap) -> Option<Admin> {
    let token = cookie(headers, SESSION_COOKIE)?;
    let session = c
        .store
        .console_session(&token_hash(token), SystemTime::now())
        .await
        .ok()??;
    Some(Admin {
        name: session.admin,
        csrf: session.csrf,
    })
}

/// A state-changing request: a live session, its CSRF token in the form,
/// and not from another site.
async fn checked(c: &Console, headers: &HeaderMap, csrf: &str) -> Result<Admin, Response> {
    if cross_site(headers) {
        return Err(forbidden());
    }
    let Some(admin) = admin_of(c, headers).await else {
        return Err(to_login());
    };
    if !same_token(csrf, &admin.csrf) {
        return Err(forbidden());
    }
    Ok(admin)
}

fn cross_site(headers: &HeaderMap) -> bool {
    headers
        .get("sec-fetch-site")
        .is_some_and(|v| v.as_bytes() == b"cross-site")
}

fn forbidden() -> Response {
    html(
        StatusCode::FORBIDDEN,
        pages::message(
            None,
            "Refused",
            "The form was stale or came from elsewhere: reload the page and try again.",
        ),
    )
}

fn failure(admin: &Admin, e: impl std::fmt::Display) -> Response {
    html(
        StatusCode::BAD_REQUEST,
        pages::message(Some((&admin.name, &admin.csrf)), "Not done", &e.to_string()),
    )
}

async fn login_page(State(c): Shared, headers: HeaderMap) -> Response {
    if admin_of(&c, &headers).await.is_some() {
        return Redirect::to("/devices").into_response();
    }
    login_form(None, StatusCode::OK)
}

/// The login form with a fresh token, also set as a cookie (double submit).
fn login_form(error: Option<&str>, status: StatusCode) -> Response {
    let csrf = random_token();
    let mut r = html(status, pages::login(&csrf, error));
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, &csrf, Duration::from_secs(3600)),
    );
    r
}

#[derive(Deserialize)]
struct LoginForm {
    name: String,
    password: String,
    csrf: String,
}

async fn login(
    State(c): Shared,
    axum::Extension(ClientAddr(peer)): axum::Extension<ClientAddr>,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Response {
    let expected = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    if cross_site(&headers) || expected.is_empty() || !same_token(&form.csrf, expected) {
        return login_form(Some("The form expired: try again."), StatusCode::FORBIDDEN);
    }
    let now = Instant::now();
    if c.login_blocked(peer.ip(), now) {
        tracing::warn!(%peer, "console login refused: too many failures");
        return login_form(
            Some("Too many failed logins from this address: wait a few minutes."),
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let ok = {
        let Ok(_permit) = c.checks.acquire().await else {
            return login_form(
                Some("The console is stopping."),
                StatusCode::SERVICE_UNAVAILABLE,
            );
        };
        c.store.check_admin(&form.name, &form.password).await
    };
    match ok {
        Ok(true) => {}
        Ok(false) => {
            c.login_failed(peer.ip(), now);
            tracing::warn!(%peer, name = %form.name, "console login failed");
            return login_form(Some("Wrong name or password."), StatusCode::UNAUTHORIZED);
        }
        Err(e) => {
            tracing::warn!(error = %e, "console login: store error");
            return login_form(
                Some("The database failed: see the cloud's log."),
                StatusCode::INTERNAL_SERVER_ERROR,
            );
        }
    }
    let (token, csrf) = (random_token(), random_token());
    if let Err(e) = c
        .store
        .create_console_session(
            &token_hash(&token),
            &form.name,
            &csrf,
            SystemTime::now(),
            SESSION_LIFETIME,
        )
        .await
    {
        tracing::warn!(error = %e, "console login: cannot store the session");
        return login_form(
            Some("The database failed: see the cloud's log."),
            StatusCode::INTERNAL_SERVER_ERROR,
        );
    }
    tracing::info!(%peer, name = %form.name, "console login");
    let mut r = Redirect::to("/devices").into_response();
    let h = r.headers_mut();
    h.append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, &token, SESSION_LIFETIME),
    );
    h.append(
        header::SET_COOKIE,
        set_cookie(LOGIN_COOKIE, "", Duration::ZERO),
    );
    r
}

#[derive(Deserialize)]
struct CsrfForm {
    csrf: String,
}

async fn logout(State(c): Shared, headers: HeaderMap, Form(form): Form<CsrfForm>) -> Response {
    if let Err(r) = checked(&c, &headers, &form.csrf).await {
        return r;
    }
    if let Some(token) = cookie(&headers, SESSION_COOKIE) {
        let _ = c
            .store
            .end_console_session(&token_hash(token), SystemTime::now())
            .await;
    }
    let mut r = to_login();
    r.headers_mut().append(
        header::SET_COOKIE,
        set_cookie(SESSION_COOKIE, "", Duration::ZERO),
    );
    r
}

/// Names peers in tunnel reports by their VIPv4.
fn namer(views: &[DeviceView]) -> impl Fn(Ipv4Addr) -> String + '_ {
    move |vip| {
        views
            .iter()
            .find(|v| v.device.vip4 == vip)
            .map_or_else(|| vip.to_string(), |v| v.device.device_id.clone())
    }
}

async fn devices(State(c): Shared, headers: HeaderMap) -> Response {
    let Some(admin) = admin_of(&c, &headers).await else {
        return to_login();
    };
    match c.device_views().await {
        Ok(views) => html(
            StatusCode::OK,
            pages::devices(
                &admin.name,
                &admin.csrf,
                &views,
                &namer(&views),
                SystemTime::now(),
                c.nms.is_some(),
            ),
        ),
        Err(e) => failure(&admin, e),
    }
}

async fn device(State(c): Shared, headers: HeaderMap, UrlPath(id): UrlPath<String>) -> Response {
    let Some(admin) = admin_of(&c, &headers).await else {
        return to_login();
    };
    let views = match c.device_views().await {
        Ok(v) => v,
        Err(e) => return failure(&admin, e),
    };
    let Some(view) = views.iter().find(|v| v.device.device_id == id) else {
        return html(
            StatusCode::NOT_FOUND,
            pages::message(
                Some((&admin.name, &admin.csrf)),
                "Not found",
                &format!("No device {id}."),
            ),
        );
    };
    match c.store.certificates_of(&id).await {
        Ok(certs) => html(
            StatusCode::OK,
            pages::device(
                &admin.name,
                &admin.csrf,
                view,
                &certs,
                &namer(&views),
                SystemTime::now(),
            ),
        ),
        Err(e) => failure(&admin, e),
    }
}

#[derive(Deserialize)]
struct AddForm {
    csrf: String,
    device_id: String,
}

async fn add_device(State(c): Shared, headers: HeaderMap, Form(form): Form<AddForm>) -> Response {
    let admin = match checked(&c, &headers, &form.csrf).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    match admin::add_device_in(&c.store, &c.cfg, form.device_id.trim(), None).await {
        Ok(added) => {
            tracing::info!(admin = %admin.name, device = %added.device.device_id, "console: device added");
            html(
                StatusCode::OK,
                pages::token(
                    &admin.name,
                    &admin.csrf,
                    &added.device,
                    &added.password.password,
                    "Added",
                ),
            )
        }
        Err(e) => failure(&admin, e),
    }
}

async fn device_action(
    State(c): Shared,
    headers: HeaderMap,
    UrlPath((id, action)): UrlPath<(String, String)>,
    Form(form): Form<CsrfForm>,
) -> Response {
    let admin = match checked(&c, &headers, &form.csrf).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let done: Result<(), AdminError> = match action.as_str() {
        "disable" | "enable" => c
            .store
            .set_device_disabled(&id, action == "disable")
            .await
            .map_err(Into::into),
        "revoke" => admin::revoke_device_in(&c.store, &id).await.map(|_| ()),
        "reset" => {
            return match admin::reset_device_in(&c.store, &id, None).await {
                Ok(reset) => {
                    tracing::info!(admin = %admin.name, device = %id, "console: device reset");
                    match c.store.device(&id).await {
                        Ok(Some(device)) => html(
                            StatusCode::OK,
                            pages::token(
                                &admin.name,
                                &admin.csrf,
                                &device,
                                &reset.password.password,
                                "Reset",
                            ),
                        ),
                        Ok(None) => failure(&admin, StoreError::NoSuchDevice(id)),
                        Err(e) => failure(&admin, e),
                    }
                }
                Err(e) => failure(&admin, e),
            };
        }
        _ => return (StatusCode::NOT_FOUND, "not found").into_response(),
    };
    match done {
        Ok(()) => {
            tracing::info!(admin = %admin.name, device = %id, %action, "console: device changed");
            Redirect::to(&format!("/devices/{id}")).into_response()
        }
        Err(e) => failure(&admin, e),
    }
}

async fn policy(State(c): Shared, headers: HeaderMap) -> Response {
    let Some(admin) = admin_of(&c, &headers).await else {
        return to_login();
    };
    match c.store.policy().await {
        Ok(current) => {
            let summary = current
                .as_ref()
                .and_then(|(_, doc)| crate::policy::parse(doc).ok())
                .map(|p| crate::policy::describe(&p.policy));
            html(
                StatusCode::OK,
                pages::policy(
                    &admin.name,
                    &admin.csrf,
                    current.as_ref().map(|(v, d)| (*v, d.as_str())),
                    summary.as_deref(),
                    None,
                ),
            )
        }
        Err(e) => failure(&admin, e),
    }
}

#[derive(Deserialize)]
struct PolicyForm {
    csrf: String,
    document: String,
}

async fn set_policy(
    State(c): Shared,
    headers: HeaderMap,
    Form(form): Form<PolicyForm>,
) -> Response {
    let admin = match checked(&c, &headers, &form.csrf).await {
        Ok(a) => a,
        Err(r) => return r,
    };
    let document = form.document.replace("\r\n", "\n");
    let outcome = admin::set_policy_in(&c.store, &document, Path::new("the policy form")).await;
    let (status, message, summary, current) = match &outcome {
        Ok(set) => {
            tracing::info!(admin = %admin.name, version = set.version, "console: policy set");
            (
                StatusCode::OK,
                (format!("Saved as version {}.", set.version), true),
                Some(set.summary.clone()),
                Some((set.version, document.as_str())),
            )
        }
        Err(e) => (StatusCode::BAD_REQUEST, (e.to_string(), false), None, None),
    };
    // A refused document stays in the form, to be mended.
    let stored = c.store.policy().await.ok().flatten();
    let current = current.or(Some((stored.map_or(0, |(v, _)| v), document.as_str())));
    html(
        status,
        pages::policy(
            &admin.name,
            &admin.csrf,
            current,
            summary.as_deref(),
            Some((&message.0, message.1)),
        ),
    )
}
