//! The costly step of TLS handshakes, kept off the workers' hot path.
//!
//! The answer to a ClientHello (key exchange and signature, about 250 us) is pure CPU. Each
//! worker has a helper thread of the lowest priority (`SCHED_IDLE`) that computes it: the
//! kernel gives the helper only CPU time no one else wants, and a worker woken by a request
//! preempts it at once, so a storm of new connections cannot delay requests on established
//! ones. A helper that is behind but finishing steps is waited for (the handshake timeout
//! bounds the wait). On a saturated machine (or one where any other process keeps the CPU
//! busy: an application on the same host) the helper finishes nothing; once a handshake has
//! waited [`HELPER_WAIT`] without the helper finishing any step, the worker takes the steps
//! itself, each after polling its sockets and in its heavy lane (see [`crate::heavy`]), so
//! new connections still get in without taking more than a fifth of the worker. For
//! [`STARVED_FOR`] after that, handshakes go to the worker straight away: a busy host costs
//! one wait a second, not one per handshake.

use std::io;
use std::sync::{mpsc, Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rustls::ServerConfig;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio_rustls::server::{Accept, StartHandshake};

use crate::heavy;

/// How long a handshake waits for a helper that finishes nothing before its worker takes
/// the step over.
const HELPER_WAIT: Duration = Duration::from_millis(25);
/// How long the worker takes every step itself after the helper was found starved.
const STARVED_FOR: Duration = Duration::from_secs(1);

/// A handshake's costly step, taken by whichever of the helper and the worker comes first.
type Step = Arc<Mutex<Option<(StartHandshake<TcpStream>, Arc<ServerConfig>)>>>;

struct Job {
    step: Step,
    answer: oneshot::Sender<Accept<TcpStream>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One worker's handshake helper.
pub(crate) struct Handshakes {
    helper: mpsc::Sender<Job>,
    /// When the helper last finished a step (or started).
    helper_finished: Arc<Mutex<Instant>>,
    /// Until when the helper is passed over (it was found starved).
    starved_until: Mutex<Option<Instant>>,
}

impl Handshakes {
    /// Starts the helper thread; it ends once the worker drops this.
    pub(crate) fn start(name: String) -> io::Result<Self> {
        let (helper, jobs) = mpsc::channel();
        let handshakes = Handshakes::with_helper(helper);
        let finished = handshakes.helper_finished.clone();
        std::thread::Builder::new().name(name).spawn(move || help(jobs, finished))?;
        Ok(handshakes)
    }

    fn with_helper(helper: mpsc::Sender<Job>) -> Self {
        Handshakes { helper, helper_finished: Arc::new(Mutex::new(Instant::now())), starved_until: Mutex::new(None) }
    }

    /// Answers the ClientHello `start` read with `config`; the returned future finishes the
    /// handshake on the worker.
    pub(crate) async fn answer(
        &self,
        start: StartHandshake<TcpStream>,
        config: Arc<ServerConfig>,
    ) -> io::Result<Accept<TcpStream>> {
        let step: Step = Arc::new(Mutex::new(Some((start, config))));
        let (answer, mut answered) = oneshot::channel();
        let starved = lock(&self.starved_until).is_some_and(|until| Instant::now() < until);
        if !starved && self.helper.send(Job { step: step.clone(), answer }).is_ok() {
            loop {
                match tokio::time::timeout(HELPER_WAIT, &mut answered).await {
                    Ok(Ok(accept)) => return Ok(accept),
                    // The helper has stopped.
                    Ok(Err(_)) => break,
                    Err(_) if lock(&self.helper_finished).elapsed() < HELPER_WAIT => {}
                    Err(_) => {
                        *lock(&self.starved_until) = Some(Instant::now() + STARVED_FOR);
                        break;
                    }
                }
            }
        }
        tokio::select! {
            Ok(accept) = &mut answered => Ok(accept),
            taken = self.take_step(&step) => match taken {
                Some(accept) => Ok(accept),
                // The helper got to it first.
                None => answered.await.map_err(|_| io::Error::other("the handshake helper stopped")),
            },
        }
    }

    /// Takes `step` on the worker in its heavy lane, unless the helper has taken it meanwhile.
    async fn take_step(&self, step: &Step) -> Option<Accept<TcpStream>> {
        // Deferred until the worker has polled its sockets: what is ready runs first.
        tokio::task::yield_now().await;
        // The step follows the turn in the same poll: no other step can slip in between.
        heavy::turn().await;
        let (start, config) = lock(step).take()?;
        let began = Instant::now();
        let accept = start.into_stream(config);
        heavy::rest_after(began.elapsed());
        Some(accept)
    }
}

fn help(jobs: mpsc::Receiver<Job>, finished: Arc<Mutex<Instant>>) {
    lowest_priority();
    while let Ok(job) = jobs.recv() {
        take_job(job, &finished);
    }
}

/// The helper's part: the job's step, unless the worker took it or its connection is gone;
/// whether it took it.
fn take_job(job: Job, finished: &Mutex<Instant>) -> bool {
    if job.answer.is_closed() {
        return false;
    }
    let untaken = lock(&job.step).take();
    let Some((start, config)) = untaken else { return false };
    // Sending fails only when the connection has ended meanwhile.
    let _ = job.answer.send(start.into_stream(config));
    *lock(finished) = Instant::now();
    true
}

/// Puts the calling thread in `SCHED_IDLE`: it runs only when its CPU would otherwise idle.
fn lowest_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a plain system call on the calling thread (pid 0) with a valid parameter.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) } != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "the TLS handshake helper keeps the normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{server_config, CertStore, Certificates};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::LazyConfigAcceptor;

    /// A client's handshake with a server that answers through `handshakes`, then one byte
    /// each way.
    async fn handshake_through(handshakes: &Handshakes) {
        let key = rcgen::generate_simple_self_signed(vec!["a.test".to_string()]).unwrap();
        let mut certs = Certificates::default();
        let (chain, private) = (key.cert.pem(), key.signing_key.serialize_pem());
        certs.add_preferred_pem(chain.as_bytes(), private.as_bytes(), "test".as_ref()).unwrap();
        let config = Arc::new(server_config(Arc::new(CertStore::new(certs)), None, &[b"http/1.1"]).unwrap());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(key.cert.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let client = async move {
            let tcp = TcpStream::connect(addr).await.unwrap();
            let name = rustls::pki_types::ServerName::try_from("a.test").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp).await.unwrap();
            tls.write_all(b"?").await.unwrap();
            let mut reply = [0u8; 1];
            tls.read_exact(&mut reply).await.unwrap();
            reply[0]
        };
        let server = async {
            let (tcp, _) = listener.accept().await.unwrap();
            let start = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), tcp).await.unwrap();
            let mut tls = handshakes.answer(start, config).await.unwrap().await.unwrap();
            let mut asked = [0u8; 1];
            tls.read_exact(&mut asked).await.unwrap();
            tls.write_all(b"!").await.unwrap();
            tls.flush().await.unwrap();
            asked[0]
        };
        assert_eq!(tokio::join!(client, server), (b'!', b'?'));
    }

    fn runtime() -> tokio::runtime::Runtime {
        crate::tls::install_default_provider();
        tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
    }

    #[test]
    fn the_helper_answers_handshakes() {
        let handshakes = Handshakes::start("test-handshakes".into()).unwrap();
        runtime().block_on(handshake_through(&handshakes));
    }

    #[test]
    fn a_handshake_the_helper_never_gets_to_is_done_by_its_worker_as_are_the_next_ones() {
        // A helper that never runs: its queue is held, never read.
        let (helper, never_read) = mpsc::channel();
        let handshakes = Handshakes::with_helper(helper);
        runtime().block_on(async {
            handshake_through(&handshakes).await;
            // Passed over now: the next handshake does not wait for it.
            handshake_through(&handshakes).await;
        });
        assert_eq!(never_read.try_iter().count(), 1, "only the first handshake was offered to the starved helper");
    }

    #[test]
    fn a_helper_that_is_behind_but_finishing_steps_is_waited_for() {
        let (helper, jobs) = mpsc::channel::<Job>();
        let handshakes = Handshakes::with_helper(helper);
        let finished = handshakes.helper_finished.clone();
        // A helper busy with earlier steps: it finishes one every 2 ms, and gets to these
        // only after 150 ms, far beyond a handshake's wait.
        let busy = std::thread::spawn(move || {
            let behind = Instant::now();
            while behind.elapsed() < Duration::from_millis(150) {
                *lock(&finished) = Instant::now();
                std::thread::sleep(Duration::from_millis(2));
            }
            let offered = std::iter::from_fn(|| jobs.recv_timeout(Duration::from_secs(5)).ok()).take(3);
            offered.fold(0, |taken, job| taken + usize::from(take_job(job, &finished)))
        });
        runtime().block_on(async {
            tokio::join!(
                handshake_through(&handshakes),
                handshake_through(&handshakes),
                handshake_through(&handshakes)
            );
        });
        assert_eq!(busy.join().unwrap(), 3, "the worker took none of the helper's steps");
    }

    /// The scheduling policy of this process's thread named `name`, if it is running.
    fn policy_of(name: &str) -> Option<String> {
        std::fs::read_dir("/proc/self/task").unwrap().flatten().find_map(|task| {
            let comm = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let sched = std::fs::read_to_string(task.path().join("sched")).ok()?;
            let policy = sched.lines().find(|l| l.starts_with("policy"))?;
            (comm.trim() == name).then(|| policy.rsplit(' ').next().unwrap_or_default().to_string())
        })
    }

    #[test]
    fn the_helper_runs_at_idle_priority_and_ends_with_its_worker() {
        let handshakes = Handshakes::start("gh-test-helper".into()).unwrap();
        let idle = libc::SCHED_IDLE.to_string();
        let waited = (0..100).find(|_| {
            std::thread::sleep(Duration::from_millis(10));
            policy_of("gh-test-helper") == Some(idle.clone())
        });
        assert!(waited.is_some(), "the helper runs with policy {:?}", policy_of("gh-test-helper"));
        drop(handshakes);
        let ended = (0..100).find(|_| {
            std::thread::sleep(Duration::from_millis(10));
            policy_of("gh-test-helper").is_none()
        });
        assert!(ended.is_some(), "the helper outlived its worker");
    }
}
