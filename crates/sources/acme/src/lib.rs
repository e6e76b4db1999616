//! The ACME source: certificates for the services that ask for them (`--tls` deploys, file
//! services with `tls = "auto"`), obtained at once, renewed at two thirds of their lifetime
//! (earlier when the CA's renewal information says so), kept in a [`Storage`] so a restart
//! issues nothing new. It produces facts for the gateway (the certificates now valid) and
//! shares the challenges being validated with the engines through the model's
//! [`Challenges`]; it never calls into an engine.

mod certificate;
mod client;
mod order;
mod propagation;
mod schedule;
mod storage;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use gatehouse_metrics::AcmeMetrics;
use gatehouse_model::acme::{AcmeSettings, Challenges, Demand, OnDemand};
use gatehouse_model::HostPattern;
use instant_acme::{Account, AccountCredentials, ExternalAccountKey, NewAccount};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use certificate::Issued;
pub use storage::{FileStorage, Storage};

/// At most this long between two looks at the schedule (a wall clock that jumps, renewal
/// information to ask again).
const LOOK_AGAIN: Duration = Duration::from_secs(3600);
/// An order (account, validation, finalization, download) that takes longer fails.
const ORDER_TIMEOUT: Duration = Duration::from_secs(180);
/// At least this long between two orders of one certificate, so that a CA issuing
/// certificates already due (backdated, very short) cannot make a loop of orders.
const MIN_BETWEEN_ORDERS: Duration = Duration::from_secs(10);

/// Lineages of on-demand certificates are named this and the name (a service name never has
/// a `:`, see `gatehouse_model::check_service_name`).
const ON_DEMAND: &str = "on-demand:";
/// How long the `ask` URL has to answer.
const ASK_TIMEOUT: Duration = Duration::from_secs(5);

/// A service that wants one certificate for its names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub service: String,
    pub names: Vec<String>,
    /// From Let's Encrypt's staging CA instead of the configured one.
    pub staging: bool,
}

/// One service's certificate as `/v1/certificates` and `gatehouse certs` show it.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateStatus {
    pub service: String,
    pub names: Vec<String>,
    /// The CA's directory.
    pub directory: String,
    /// The certificate in service, if any.
    pub issuer: Option<String>,
    pub not_after: Option<SystemTime>,
    pub renew_at: Option<SystemTime>,
    /// An order is running now.
    pub ordering: bool,
    /// Failed orders in a row, and the last one's error.
    pub failures: u32,
    pub last_error: Option<String>,
}

/// What the source knows of one service's certificate.
struct Lineage {
    names: Vec<String>,
    directory: String,
    issued: Option<Arc<Issued>>,
    /// Wall-clock time of the next renewal (now for a missing or mismatched certificate).
    renew_at: SystemTime,
    /// No order before this (backoff after failures).
    not_before: Instant,
    failures: u32,
    last_error: Option<String>,
    ordering: bool,
    /// When to ask the CA's renewal information for the certificate's window (`None`: the
    /// CA has none, or a check is running).
    window_check: Option<Instant>,
}

impl Lineage {
    fn new(names: Vec<String>, directory: String, issued: Option<Arc<Issued>>, renew_at: SystemTime) -> Self {
        Lineage {
            names,
            directory,
            issued,
            renew_at,
            not_before: Instant::now(),
            failures: 0,
            last_error: None,
            ordering: false,
            window_check: Some(Instant::now()),
        }
    }

    fn due(&self, now: Instant, wall: SystemTime) -> bool {
        !self.ordering && self.not_before <= now && self.renew_at <= wall
    }
}

struct Inner {
    settings: AcmeSettings,
    storage: Arc<dyn Storage>,
    challenges: Arc<Challenges>,
    lineages: Mutex<BTreeMap<String, Lineage>>,
    /// What each CA directory asked with its last 429 or 503 (`Retry-After`).
    ca_asked: Mutex<HashMap<String, client::CaAsked>>,
    /// One account per CA directory, made or loaded on first use.
    accounts: tokio::sync::Mutex<BTreeMap<String, Account>>,
    metrics: AcmeMetrics,
    /// Handshakes waiting for an on-demand certificate, by lineage.
    waiting: Mutex<HashMap<String, Vec<oneshot::Sender<bool>>>>,
    /// When the on-demand orders of the last minute started.
    on_demand_starts: Mutex<VecDeque<Instant>>,
    /// Told when the set of valid certificates changed.
    changed: Box<dyn Fn() + Send + Sync>,
}

/// The running ACME source.
pub struct AcmeSource {
    inner: Arc<Inner>,
    wanted: watch::Sender<Vec<Wanted>>,
    task: tokio::task::AbortHandle,
}

impl AcmeSource {
    /// Starts the source on the current Tokio runtime; `changed` is called (from its task)
    /// whenever [`AcmeSource::certificates`] changed.
    pub fn start(
        settings: AcmeSettings,
        storage: Arc<dyn Storage>,
        challenges: Arc<Challenges>,
        metrics: AcmeMetrics,
        on_demand: Option<&OnDemand>,
        changed: impl Fn() + Send + Sync + 'static,
    ) -> Self {
        let inner = Arc::new(Inner {
            settings,
            storage,
            challenges,
            metrics,
            waiting: Mutex::new(HashMap::new()),
            on_demand_starts: Mutex::new(VecDeque::new()),
            lineages: Mutex::new(BTreeMap::new()),
            ca_asked: Mutex::new(HashMap::new()),
            accounts: tokio::sync::Mutex::new(BTreeMap::new()),
            changed: Box::new(changed),
        });
        let (wanted, watching) = watch::channel(Vec::new());
        let demands = on_demand.and_then(OnDemand::take);
        let task = tokio::spawn(run(inner.clone(), watching, demands)).abort_handle();
        AcmeSource { inner, wanted, task }
    }

    /// The services that want certificates now; certificates already stored are loaded at
    /// once, missing or outdated ones ordered at once.
    pub fn want(&self, wanted: Vec<Wanted>) {
        self.inner.reconcile(&wanted);
        self.wanted.send_if_modified(|current| {
            let differs = *current != wanted;
            *current = wanted;
            differs
        });
    }

    /// The certificates in service, one per service that has one.
    pub fn certificates(&self) -> Vec<Arc<Issued>> {
        let lineages = self.inner.lock();
        lineages.values().filter_map(|l| l.issued.clone()).collect()
    }

    pub fn status(&self) -> Vec<CertificateStatus> {
        let lineages = self.inner.lock();
        lineages
            .iter()
            .map(|(service, l)| CertificateStatus {
                service: service.clone(),
                names: l.names.clone(),
                directory: l.directory.clone(),
                issuer: l.issued.as_ref().map(|i| i.issuer.clone()),
                not_after: l.issued.as_ref().map(|i| i.not_after),
                renew_at: l.issued.as_ref().map(|_| l.renew_at),
                ordering: l.ordering,
                failures: l.failures,
                last_error: l.last_error.clone(),
            })
            .collect()
    }

    pub fn settings(&self) -> &AcmeSettings {
        &self.inner.settings
    }

    /// Orders nothing more; the certificates in service stay (a binary upgrade: the new
    /// process orders from now on).
    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn run(inner: Arc<Inner>, mut wanted: watch::Receiver<Vec<Wanted>>, mut demands: Option<mpsc::Receiver<Demand>>) {
    let mut orders: JoinSet<(String, Vec<String>, Result<Issued, String>)> = JoinSet::new();
    let mut windows: JoinSet<WindowAnswer> = JoinSet::new();
    loop {
        for (service, issued) in inner.start_window_checks() {
            let inner = inner.clone();
            windows.spawn(async move {
                let window = inner.renewal_window(&issued).await;
                (service, issued, window)
            });
        }
        for (service, names, directory) in inner.start_due() {
            let inner = inner.clone();
            orders.spawn(async move {
                let result = match tokio::time::timeout(ORDER_TIMEOUT, inner.order(&service, &names, &directory)).await
                {
                    Ok(result) => result,
                    Err(_) => Err(format!("the order took longer than {}s", ORDER_TIMEOUT.as_secs())),
                };
                (service, names, result)
            });
        }
        let wake = inner.next_wake();
        tokio::select! {
            changed = wanted.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            Some(demand) = next_demand(&mut demands) => inner.demand(demand),
            Some(done) = orders.join_next(), if !orders.is_empty() => {
                if let Ok((service, names, result)) = done {
                    inner.finish(&service, &names, result);
                }
            }
            Some(done) = windows.join_next(), if !windows.is_empty() => {
                if let Ok((service, issued, window)) = done {
                    inner.apply_window(&service, &issued, window);
                }
            }
            () = tokio::time::sleep_until(wake) => {}
        }
    }
}

/// What the CA said of one service's certificate's renewal window.
type WindowAnswer = (String, Arc<Issued>, Result<Option<Window>, String>);

/// A renewal window the CA suggested, and when to ask again.
struct Window {
    start: SystemTime,
    end: SystemTime,
    ask_again: Duration,
}

/// The next on-demand request, or never without on-demand TLS.
async fn next_demand(demands: &mut Option<mpsc::Receiver<Demand>>) -> Option<Demand> {
    match demands {
        Some(demands) => demands.recv().await,
        None => std::future::pending().await,
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Lineage>> {
        self.lineages.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where a lineage's certificate is stored: a service's under `certificates/`, an
    /// on-demand name's under `on-demand/`.
    fn certificate_key(lineage: &str) -> String {
        match lineage.strip_prefix(ON_DEMAND) {
            Some(name) => format!("on-demand/{name}.json"),
            None => format!("certificates/{lineage}.json"),
        }
    }

    fn directory(&self, wanted: &Wanted) -> String {
        match wanted.staging {
            true => gatehouse_model::acme::LETS_ENCRYPT_STAGING.to_string(),
            false => self.settings.directory.clone(),
        }
    }

    /// Follows the wanted list: new services get their stored certificate (or are due at
    /// once), services no longer wanted are dropped.
    fn reconcile(&self, wanted: &[Wanted]) {
        let mut changed = false;
        {
            let mut lineages = self.lock();
            let before = lineages.len();
            lineages.retain(|service, _| {
                let keep = service.starts_with(ON_DEMAND) || wanted.iter().any(|w| &w.service == service);
                if !keep {
                    self.metrics.forget(service);
                }
                keep
            });
            changed |= lineages.len() != before;
            for w in wanted {
                let directory = self.directory(w);
                match lineages.get_mut(&w.service) {
                    Some(l) if l.names == w.names && l.directory == directory => {}
                    Some(l) => {
                        // New names or CA: the current certificate serves its names until the
                        // new one arrives.
                        l.names = w.names.clone();
                        l.directory = directory.clone();
                        if !l.issued.as_ref().is_some_and(|i| i.covers(&w.names, &directory)) {
                            l.renew_at = SystemTime::UNIX_EPOCH;
                            l.not_before = Instant::now();
                            l.failures = 0;
                        }
                    }
                    None => {
                        let issued = self.stored(&w.service);
                        changed |= issued.is_some();
                        self.metrics.certificate(&w.service, issued.as_ref().map(|i| unix(i.not_after)), 0);
                        let renew_at = match &issued {
                            Some(i) if i.covers(&w.names, &directory) => schedule::renew_at(i.not_before, i.not_after),
                            _ => SystemTime::UNIX_EPOCH,
                        };
                        lineages.insert(w.service.clone(), Lineage::new(w.names.clone(), directory, issued, renew_at));
                    }
                }
            }
        }
        if changed {
            (self.changed)();
        }
    }

    /// A handshake asks for a certificate for a name no service lists: answered at once when
    /// one is held or stored, else ordered (after the rate limit and, in the order, the
    /// `ask` URL) with the handshake waiting for the outcome.
    fn demand(&self, demand: Demand) {
        let Some(settings) = &self.settings.on_demand else {
            let _ = demand.answer.send(false);
            return;
        };
        let name = demand.name;
        if !matches!(HostPattern::parse(&name), Ok(HostPattern::Exact(_))) || name.parse::<std::net::IpAddr>().is_ok() {
            let _ = demand.answer.send(false);
            return;
        }
        let lineage = format!("{ON_DEMAND}{name}");
        let mut lineages = self.lock();
        if let Some(l) = lineages.get(&lineage) {
            if l.issued.is_some() {
                drop(lineages);
                let _ = demand.answer.send(true);
            } else {
                self.wait(&lineage, demand.answer);
            }
            return;
        }
        let directory = self.settings.directory.clone();
        if let Some(stored) = self.stored(&lineage).filter(|i| i.covers(std::slice::from_ref(&name), &directory)) {
            if stored.not_after > SystemTime::now() {
                let renew_at = schedule::renew_at(stored.not_before, stored.not_after);
                lineages.insert(lineage, Lineage::new(vec![name], directory, Some(stored), renew_at));
                drop(lineages);
                (self.changed)();
                let _ = demand.answer.send(true);
                return;
            }
        }
        // The rate limit counts orders started, so a flood of new names costs the CA little.
        let mut starts = self.on_demand_starts.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while starts.front().is_some_and(|t| now.duration_since(*t) > Duration::from_secs(60)) {
            starts.pop_front();
        }
        if starts.len() >= settings.per_minute as usize {
            tracing::warn!(
                name,
                per_minute = settings.per_minute,
                "on-demand certificate refused: over the rate limit"
            );
            let _ = demand.answer.send(false);
            return;
        }
        starts.push_back(now);
        lineages.insert(lineage.clone(), Lineage::new(vec![name], directory, None, SystemTime::UNIX_EPOCH));
        drop(lineages);
        self.wait(&lineage, demand.answer);
    }

    fn wait(&self, lineage: &str, answer: oneshot::Sender<bool>) {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner()).entry(lineage.to_string()).or_default().push(answer);
    }

    /// Tells the handshakes waiting for `lineage` whether its certificate is in service.
    fn answer_waiting(&self, lineage: &str, issued: bool) {
        let waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner()).remove(lineage);
        for answer in waiting.unwrap_or_default() {
            let _ = answer.send(issued);
        }
    }

    /// Whether the platform's `ask` URL allows a certificate for `name` (2xx).
    async fn allowed(&self, name: &str) -> Result<(), String> {
        let Some(settings) = &self.settings.on_demand else { return Err("on-demand TLS is off".into()) };
        let (target, path) = settings.ask_target()?;
        let probe = gatehouse_health::Probe {
            path: format!("{path}?domain={name}"),
            port: None,
            timeout: ASK_TIMEOUT,
            host: None,
            verify: true,
        };
        gatehouse_health::check(&target, &probe).await.map_err(|e| format!("{name}: the ask URL refused it: {e}"))
    }

    /// The stored certificate of `service`, if one is readable.
    fn stored(&self, service: &str) -> Option<Arc<Issued>> {
        let bytes = match self.storage.load(&Self::certificate_key(service)) {
            Ok(bytes) => bytes?,
            Err(e) => {
                tracing::error!(service, error = %e, "cannot read the stored certificate; a new one is ordered");
                return None;
            }
        };
        match Issued::from_bytes(&bytes) {
            Ok(issued) => {
                tracing::info!(service, names = ?issued.names, "stored certificate loaded");
                Some(Arc::new(issued))
            }
            Err(e) => {
                tracing::error!(service, error = %e, "the stored certificate is unusable; a new one is ordered");
                None
            }
        }
    }

    /// Marks the lineages due now as ordering and returns them.
    fn start_due(&self) -> Vec<(String, Vec<String>, String)> {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let mut lineages = self.lock();
        let mut due = Vec::new();
        for (service, l) in lineages.iter_mut().filter(|(_, l)| l.due(now, wall)) {
            l.ordering = true;
            due.push((service.clone(), l.names.clone(), l.directory.clone()));
        }
        due
    }

    /// When the next lineage falls due.
    fn next_wake(&self) -> Instant {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let lineages = self.lock();
        let orders = lineages
            .values()
            .filter(|l| !l.ordering)
            .map(|l| l.not_before.max(now + l.renew_at.duration_since(wall).unwrap_or(Duration::ZERO)));
        let checks = lineages.values().filter(|l| l.issued.is_some()).filter_map(|l| l.window_check);
        orders.chain(checks).min().unwrap_or(now + LOOK_AGAIN).min(now + LOOK_AGAIN)
    }

    /// The certificates whose renewal window is due to be asked for, marked as asking.
    fn start_window_checks(&self) -> Vec<(String, Arc<Issued>)> {
        let now = Instant::now();
        let mut lineages = self.lock();
        let mut due = Vec::new();
        for (service, l) in lineages.iter_mut() {
            if let (Some(issued), Some(at)) = (&l.issued, l.window_check) {
                if at <= now && !l.ordering {
                    l.window_check = None;
                    due.push((service.clone(), issued.clone()));
                }
            }
        }
        due
    }

    /// Asks the CA for `issued`'s renewal window (RFC 9773); `None` when it has no renewal
    /// information.
    async fn renewal_window(&self, issued: &Issued) -> Result<Option<Window>, String> {
        let id = rustls_pki_types::CertificateDer::from(issued.leaf.clone());
        let id = instant_acme::CertificateIdentifier::try_from(&id).map_err(|e| format!("renewal identifier: {e}"))?;
        let account = self.account(&issued.directory).await?;
        match account.renewal_info(&id).await {
            Ok((info, retry_after)) => {
                let time = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
                Ok(Some(Window {
                    start: time(info.suggested_window.start.unix_timestamp()),
                    end: time(info.suggested_window.end.unix_timestamp()),
                    ask_again: schedule::next_window_check(retry_after),
                }))
            }
            Err(instant_acme::Error::Unsupported(_)) => Ok(None),
            Err(e) => Err(format!("renewal information: {e}")),
        }
    }

    /// Moves a renewal earlier when the CA's window says so, and schedules the next look.
    fn apply_window(&self, service: &str, issued: &Arc<Issued>, window: Result<Option<Window>, String>) {
        let mut lineages = self.lock();
        let Some(l) = lineages.get_mut(service).filter(|l| l.issued.as_ref().is_some_and(|i| Arc::ptr_eq(i, issued)))
        else {
            return;
        };
        match window {
            Ok(Some(window)) => {
                let before = l.renew_at;
                l.renew_at = schedule::renew_in_window(l.renew_at, window.start, window.end, fastrand::f64());
                if l.renew_at < before {
                    tracing::info!(service, "the CA's renewal window moves the renewal earlier");
                }
                l.window_check = Some(Instant::now() + window.ask_again);
            }
            // The CA has no renewal information: our own schedule alone.
            Ok(None) => l.window_check = None,
            Err(e) => {
                tracing::debug!(service, error = %e, "no renewal window; asking again in an hour");
                l.window_check = Some(Instant::now() + LOOK_AGAIN);
            }
        }
    }

    fn finish(&self, service: &str, names: &[String], result: Result<Issued, String>) {
        let mut changed = false;
        let issued = result.is_ok();
        {
            let mut lineages = self.lock();
            if !issued && service.starts_with(ON_DEMAND) && lineages.get(service).is_some_and(|l| l.issued.is_none()) {
                // A refused or failed first order is forgotten: the next handshake asks anew,
                // within the rate limit.
                lineages.remove(service);
                drop(lineages);
                self.metrics.order(false, self.settings.challenge.as_str());
                tracing::warn!(service, error = %result.err().unwrap_or_default(), "on-demand certificate not obtained");
                self.answer_waiting(service, false);
                return;
            }
            let Some(l) = lineages.get_mut(service) else { return };
            l.ordering = false;
            self.metrics.order(result.is_ok(), self.settings.challenge.as_str());
            match result {
                Ok(issued) => {
                    if let Err(e) = self.storage.store(&Self::certificate_key(service), &issued.to_bytes()) {
                        // Served anyway; a restart would order again.
                        tracing::error!(service, error = %e, "cannot store the new certificate");
                    }
                    l.renew_at = schedule::renew_at(issued.not_before, issued.not_after);
                    l.not_before = Instant::now() + MIN_BETWEEN_ORDERS;
                    l.failures = 0;
                    self.metrics.certificate(service, Some(unix(issued.not_after)), 0);
                    l.last_error = None;
                    l.issued = Some(Arc::new(issued));
                    l.window_check = Some(Instant::now());
                    changed = true;
                    if l.names != names {
                        // The names changed while ordering: order again for the new ones.
                        l.renew_at = SystemTime::UNIX_EPOCH;
                    }
                }
                Err(e) => {
                    l.failures += 1;
                    self.metrics.certificate(service, None, l.failures);
                    let asked = *self.ca_asked(&l.directory).lock().unwrap_or_else(|e| e.into_inner());
                    let wait = schedule::retry_wait(l.failures, asked, SystemTime::now());
                    l.not_before = Instant::now() + wait;
                    tracing::warn!(service, failures = l.failures, retry_in_s = wait.as_secs(), error = %e,
                        "ACME order failed; the current certificate (if any) keeps serving");
                    l.last_error = Some(e);
                }
            }
        }
        if changed {
            (self.changed)();
        }
        self.answer_waiting(service, issued);
    }

    /// Obtains a certificate for `service`'s `names` from the CA at `directory`; an
    /// on-demand name must be allowed by the `ask` URL first.
    async fn order(&self, service: &str, names: &[String], directory: &str) -> Result<Issued, String> {
        if service.starts_with(ON_DEMAND) {
            for name in names {
                self.allowed(name).await?;
            }
        }
        let account = self.account(directory).await?;
        let presenter = order::Presenter {
            kind: self.settings.challenge,
            challenges: &self.challenges,
            dns_hook: self.settings.dns_hook.as_deref(),
            dns_resolver: self.settings.dns_resolver,
        };
        let (chain, key) = order::obtain(&account, names, &presenter).await?;
        Issued::new(names.to_vec(), chain, key, directory.to_string())
    }

    /// Where the CA at `directory` says how long to leave it alone.
    fn ca_asked(&self, directory: &str) -> client::CaAsked {
        let mut asked = self.ca_asked.lock().unwrap_or_else(|e| e.into_inner());
        asked.entry(directory.to_string()).or_default().clone()
    }

    /// The ACME account at `directory`: the stored one, else a new one created and stored.
    async fn account(&self, directory: &str) -> Result<Account, String> {
        let mut accounts = self.accounts.lock().await;
        if let Some(account) = accounts.get(directory) {
            return Ok(account.clone());
        }
        let settings = &self.settings;
        let key = format!("accounts/{}.json", storage_name(directory));
        // `ca_root` is the configured CA's; Let's Encrypt staging goes by the system's roots.
        let root = settings.ca_root.as_deref().filter(|_| directory == settings.directory);
        let builder = || {
            let client =
                client::CaClient::new(root, self.ca_asked(directory)).map_err(|e| format!("ACME HTTP client: {e}"))?;
            Ok::<_, String>(Account::builder_with_http(Box::new(client)))
        };
        let stored = self.storage.load(&key).map_err(|e| format!("cannot read the ACME account: {e}"))?;
        let account = match stored {
            Some(bytes) => {
                let credentials: AccountCredentials = serde_json::from_slice(&bytes)
                    .map_err(|e| format!("the stored ACME account {key} is unreadable: {e}"))?;
                builder()?.from_credentials(credentials).await.map_err(|e| format!("{directory}: {e}"))?
            }
            None => {
                let contact: Vec<&str> = settings.contact.iter().map(String::as_str).collect();
                // The binding is the configured CA's, as `ca_root` is.
                let binding = match &settings.external_account {
                    Some(_) if directory != settings.directory => None,
                    None => None,
                    Some(eab) => Some(ExternalAccountKey::new(eab.key_id.clone(), &decode_mac_key(&eab.mac_key)?)),
                };
                let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
                let (account, credentials) = builder()?
                    .create(&new, directory.to_string(), binding.as_ref())
                    .await
                    .map_err(|e| format!("cannot create an ACME account at {directory}: {e}"))?;
                let bytes = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
                self.storage.store(&key, &bytes).map_err(|e| format!("cannot store the ACME account: {e}"))?;
                tracing::info!(directory, account = account.id(), "ACME account created");
                account
            }
        };
        accounts.insert(directory.to_string(), account.clone());
        Ok(account)
    }
}

fn unix(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// A file-name-safe, stable name for a directory URL (one account per CA).
fn storage_name(directory: &str) -> String {
    let readable: String = directory
        .trim_start_matches("https://")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' })
        .take(80)
        .collect();
    // FNV-1a: two URLs that read alike after the replacement still get two accounts.
    let hash =
        directory.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    format!("{readable}-{hash:016x}")
}

/// External account binding MAC keys are base64url (what ZeroSSL and step-ca hand out).
fn decode_mac_key(text: &str) -> Result<Vec<u8>, String> {
    use base64::Engine;
    let key = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|e| format!("[acme] eab_mac_key is not base64url: {e}"))?;
    if key.is_empty() {
        return Err("[acme] eab_mac_key is empty".into());
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Storage in memory.
    #[derive(Default)]
    struct Memory(Mutex<BTreeMap<String, Vec<u8>>>);

    impl Storage for Memory {
        fn load(&self, key: &str) -> std::io::Result<Option<Vec<u8>>> {
            Ok(self.0.lock().unwrap().get(key).cloned())
        }
        fn store(&self, key: &str, bytes: &[u8]) -> std::io::Result<()> {
            self.0.lock().unwrap().insert(key.to_string(), bytes.to_vec());
            Ok(())
        }
    }

    fn inner(storage: Arc<Memory>) -> Inner {
        Inner {
            settings: AcmeSettings::new("/unused".into()),
            storage,
            challenges: Challenges::new(),
            lineages: Mutex::new(BTreeMap::new()),
            ca_asked: Mutex::new(HashMap::new()),
            accounts: tokio::sync::Mutex::new(BTreeMap::new()),
            metrics: gatehouse_metrics::Metrics::new().acme,
            waiting: Mutex::new(HashMap::new()),
            on_demand_starts: Mutex::new(VecDeque::new()),
            changed: Box::new(|| {}),
        }
    }

    fn wanted(names: &[&str], staging: bool) -> Vec<Wanted> {
        vec![Wanted { service: "web".into(), names: names.iter().map(|n| n.to_string()).collect(), staging }]
    }

    #[test]
    fn a_stored_certificate_serves_until_its_renewal_and_a_change_of_names_or_ca_orders_anew() {
        let storage = Arc::new(Memory::default());
        let (chain, key) = certificate::tests::self_signed(&["a.test"]);
        let stored =
            Issued::new(vec!["a.test".into()], chain, key, gatehouse_model::acme::LETS_ENCRYPT.into()).unwrap();
        storage.store("certificates/web.json", &stored.to_bytes()).unwrap();
        let source = inner(storage);
        source.reconcile(&wanted(&["a.test"], false));
        assert!(source.start_due().is_empty(), "loaded, not due for 60 days");
        assert!(source.lock()["web"].issued.is_some());
        source.reconcile(&wanted(&["a.test", "b.test"], false));
        let due = source.start_due();
        assert_eq!(due.len(), 1, "a new name is ordered at once");
        assert!(source.lock()["web"].issued.is_some(), "the old certificate serves meanwhile");
        source.finish("web", &due[0].1, Err("CA down".into()));
        assert!(source.start_due().is_empty(), "a failure backs off");
        assert_eq!(source.lock()["web"].failures, 1);
        source.reconcile(&wanted(&["a.test"], true));
        let due = source.start_due();
        assert_eq!(due[0].2, gatehouse_model::acme::LETS_ENCRYPT_STAGING, "--tls-staging: another CA, ordered at once");
        source.reconcile(&[]);
        assert!(source.lock().is_empty(), "a service that no longer wants one is dropped");
        assert_eq!(Inner::certificate_key("web"), "certificates/web.json");
        assert_eq!(Inner::certificate_key("on-demand:a.test"), "on-demand/a.test.json", "a path storage takes");
    }

    #[test]
    fn mac_keys_decode_as_base64url() {
        assert_eq!(decode_mac_key("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_mac_key("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_mac_key("-_8").unwrap(), [0xfb, 0xff]);
        assert!(decode_mac_key("+/8").is_err(), "standard base64 is not base64url");
        assert!(decode_mac_key("a b").is_err());
        assert!(decode_mac_key("").is_err());
    }

    #[test]
    fn each_ca_gets_its_own_account_file() {
        let prod = storage_name(gatehouse_model::acme::LETS_ENCRYPT);
        let staging = storage_name(gatehouse_model::acme::LETS_ENCRYPT_STAGING);
        assert!(prod.starts_with("acme-v02.api.letsencrypt.org_directory-"), "{prod}");
        assert_ne!(prod, staging);
        assert_ne!(storage_name("https://a.test/x_y"), storage_name("https://a.test/x/y"));
    }
}
