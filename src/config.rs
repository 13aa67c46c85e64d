use std::path::PathBuf;
pub struct Url { pub scheme: String, pub host: String, pub port: u16 }
impl Url { pub fn socket_addr(&self) -> Result<std::net::SocketAddr, String> { unimplemented!() } }
impl std::fmt::Display for Url { fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result { write!(f, "x") } }
pub enum ClusterState { New, Existing }
pub struct Config { pub name: String, pub data_dir: PathBuf, pub wal_dir: Option<PathBuf>, pub listen_client_urls: Vec<Url>, pub advertise_client_urls: Vec<Url>, pub listen_peer_urls: Vec<Url>, pub initial_advertise_peer_urls: Vec<Url>, pub initial_cluster: Vec<(String, Url)>, pub initial_cluster_state: ClusterState, pub initial_cluster_token: String, pub max_request_bytes: usize, pub max_txn_ops: usize, pub snapshot_count: u64, pub heartbeat_interval_ms: u64, pub election_timeout_ms: u64, pub quota_backend_bytes: u64, pub cores: Option<usize>, pub warnings: Vec<String> }
pub enum ConfigError { Help(String), Version, Invalid(String) }
pub fn parse(_a: &[String], _e: &[(String, String)]) -> Result<Config, ConfigError> { unimplemented!() }
pub fn member_id(_p: &[String], _t: &str) -> u64 { unimplemented!() }
pub fn cluster_id(_m: &[u64]) -> u64 { unimplemented!() }
