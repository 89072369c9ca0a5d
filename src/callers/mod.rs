//! Who is calling, and what it may call: the callers file (`SESSIOND_CALLERS_FILE`).
//!
//! A caller is recognised by the SPIFFE id (URI SAN) or DNS SAN of its client certificate, or by
//! an API key sent as `authorization: Bearer <key>` and matched by its SHA-256. Each caller may
//! call the `sessiond.v1.SessionService` methods its `allow` names (`"*"` for all of them),
//! Envoy's `envoy.service.auth.v3.Authorization/Check` only if `allow` holds `"ExtAuthz"`, and
//! reflection only if it holds `"reflection"`. `grpc.health.v1.Health` needs no identity.
//!
//! Without the file every call is allowed (open mode), as the `anonymous` caller.

mod layer;
mod peer;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use anyhow::Context;
use arc_swap::ArcSwap;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub use layer::{CallersLayer, ConnectInfo};
pub use peer::PeerIdentity;

use crate::{
    limits::{Rate, Requester},
    metrics::{Rpc, RpcCalls},
};

/// The name calls are attributed to in open mode (no callers file).
pub const ANONYMOUS: &str = "anonymous";
/// The name refused calls without a recognised identity are counted under.
pub const UNIDENTIFIED: &str = "unidentified";

/// One caller of the callers file (or the open mode's `anonymous`). Handlers, metrics and spans
/// read it from the request's extensions.
#[derive(Debug)]
pub struct Caller {
    name: String,
    allow: Allow,
    /// Its own `create_rate` from the callers file, over `SESSIOND_CREATE_RATE_PER_CALLER`.
    create_rate: Option<Rate>,
    calls: RpcCalls,
}

impl Caller {
    fn new(name: &str, allow: Allow, create_rate: Option<Rate>) -> Self {
        Self {
            name: name.to_owned(),
            allow,
            create_rate,
            calls: RpcCalls::new(name),
        }
    }

    /// The caller allowed everything, in open mode.
    pub fn anonymous() -> Arc<Self> {
        static ANONYMOUS_CALLER: std::sync::OnceLock<Arc<Caller>> = std::sync::OnceLock::new();
        ANONYMOUS_CALLER
            .get_or_init(|| {
                Arc::new(Self::new(
                    ANONYMOUS,
                    Allow {
                        every_method: true,
                        methods: [true; Rpc::COUNT],
                        reflection: true,
                    },
                    None,
                ))
            })
            .clone()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who this caller is to the per-caller CreateSession rate; `None` in open mode, where every
    /// call is `anonymous` and a shared count would only throttle everyone together.
    pub fn requester(&self) -> Option<Requester<'_>> {
        (self.name != ANONYMOUS).then_some(Requester {
            name: &self.name,
            create_rate: self.create_rate,
        })
    }

    /// This caller's `sessiond_rpc_requests_total` counters.
    pub fn calls(&self) -> &RpcCalls {
        &self.calls
    }

    fn may(&self, target: Target) -> bool {
        match target {
            Target::Health => true,
            Target::Reflection => self.allow.reflection,
            Target::Method(rpc) => {
                (self.allow.every_method && Rpc::SESSION_SERVICE.contains(&rpc))
                    || self.allow.methods[rpc as usize]
            }
            Target::UnknownMethod => self.allow.every_method,
            Target::Other => false,
        }
    }
}

/// What a caller may call.
#[derive(Debug, Default)]
struct Allow {
    /// `"*"`: every SessionService method, present and future (not Check, not reflection).
    every_method: bool,
    methods: [bool; Rpc::COUNT],
    reflection: bool,
}

/// What a request path calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Health,
    Reflection,
    Method(Rpc),
    /// A SessionService method this build does not know: only `"*"` reaches UNIMPLEMENTED.
    UnknownMethod,
    Other,
}

const SESSION_SERVICE: &str = "sessiond.v1.SessionService";
const EXT_AUTHZ_SERVICE: &str = "envoy.service.auth.v3.Authorization";
/// The `allow` entry for Envoy's Check.
const EXT_AUTHZ: &str = "ExtAuthz";

impl Target {
    fn of(path: &str) -> Self {
        let (service, method) = path
            .strip_prefix('/')
            .and_then(|path| path.split_once('/'))
            .unwrap_or((path, ""));
        match service {
            "grpc.health.v1.Health" => Self::Health,
            "grpc.reflection.v1.ServerReflection" | "grpc.reflection.v1alpha.ServerReflection" => {
                Self::Reflection
            }
            SESSION_SERVICE => {
                Rpc::session_method(method).map_or(Self::UnknownMethod, Self::Method)
            }
            EXT_AUTHZ_SERVICE if method == Rpc::Check.name() => Self::Method(Rpc::Check),
            _ => Self::Other,
        }
    }
}

/// The policy in force: open, or the callers of a file.
#[derive(Debug)]
pub enum Policy {
    /// No callers file: every call is allowed, as `anonymous`.
    Open,
    Callers(Callers),
}

/// The callers of one callers file, indexed by each way of recognising them.
#[derive(Debug, Default)]
pub struct Callers {
    callers: Vec<Arc<Caller>>,
    by_spiffe_id: HashMap<String, usize>,
    by_dns_name: HashMap<String, usize>,
    /// (SHA-256 of the key, caller index); compared in constant time, every entry each call.
    keys: Vec<([u8; 32], usize)>,
}

/// Who a request says it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct Credentials<'a> {
    /// The `authorization` header, if any.
    pub authorization: Option<&'a [u8]>,
    /// The names in the client certificate, over mutual TLS.
    pub peer: Option<&'a PeerIdentity>,
}

impl Callers {
    /// The caller these credentials name. A presented key decides alone: a wrong key is refused
    /// even over a recognised certificate, so a key mix-up never silently runs as another caller.
    pub fn identify(&self, credentials: Credentials<'_>) -> Option<Arc<Caller>> {
        let index = match credentials.authorization {
            Some(header) => self.by_key(bearer(header)?),
            None => credentials.peer.and_then(|peer| {
                peer.spiffe_ids()
                    .find_map(|id| self.by_spiffe_id.get(id))
                    .or_else(|| peer.dns_names().find_map(|name| self.by_dns_name.get(name)))
                    .copied()
            }),
        }?;
        self.callers.get(index).cloned()
    }

    fn by_key(&self, key: &[u8]) -> Option<usize> {
        let presented: [u8; 32] = Sha256::digest(key).into();
        // Every entry is compared, so the time taken says nothing about which one matched.
        let mut found = None;
        for (hash, index) in &self.keys {
            if bool::from(hash.ct_eq(&presented)) {
                found = Some(*index);
            }
        }
        found
    }

    /// How many callers the file names.
    pub fn len(&self) -> usize {
        self.callers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }
}

/// The key of an `authorization: Bearer <key>` header; None for any other shape.
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, key) = header.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ") && !key.is_empty()).then_some(key)
}

/// The policy in force, swapped whole on a reload; shared by the gRPC layer and the reloader.
#[derive(Debug, Clone)]
pub struct PolicySource {
    file: Option<PathBuf>,
    current: Arc<ArcSwap<Policy>>,
    /// The file's text when last read, so an unchanged file is neither parsed nor logged again
    /// on every interval (and a broken one is reported once, not every interval).
    last_read: Arc<Mutex<String>>,
}

impl PolicySource {
    /// Reads `file` (open mode without one); the error names the file and the caller entry.
    pub fn load(file: Option<PathBuf>) -> anyhow::Result<Self> {
        let (policy, text) = match &file {
            Some(path) => {
                let text = read(path)?;
                (Policy::Callers(parse_file(path, &text)?), text)
            }
            None => (Policy::Open, String::new()),
        };
        Ok(Self {
            file,
            current: Arc::new(ArcSwap::from_pointee(policy)),
            last_read: Arc::new(Mutex::new(text)),
        })
    }

    /// Rereads the file; on an error the policy in force stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = read(path)?;
        {
            let mut last_read = self
                .last_read
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if *last_read == text {
                return Ok(());
            }
            last_read.clone_from(&text);
        }
        let callers = parse_file(path, &text)?;
        tracing::info!(file = %path.display(), callers = callers.len(), "callers file applied");
        self.current.store(Arc::new(Policy::Callers(callers)));
        Ok(())
    }

    pub fn current(&self) -> arc_swap::Guard<Arc<Policy>> {
        self.current.load()
    }

    pub fn is_open(&self) -> bool {
        self.file.is_none()
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path)
        .with_context(|| format!("cannot read SESSIOND_CALLERS_FILE {}", path.display()))
}

fn parse_file(path: &Path, text: &str) -> anyhow::Result<Callers> {
    parse(text).with_context(|| format!("SESSIOND_CALLERS_FILE {}", path.display()))
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    caller: Vec<Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    name: String,
    #[serde(default)]
    spiffe_id: OneOrMany,
    #[serde(default)]
    dns_name: OneOrMany,
    /// Several, so a key can be rotated: add the new hash, move the client, remove the old.
    #[serde(default)]
    api_key_sha256: OneOrMany,
    allow: Vec<String>,
    /// CreateSession calls of this caller, `N/period` or `off`, over
    /// `SESSIOND_CREATE_RATE_PER_CALLER`.
    create_rate: Option<String>,
}

/// A string or a list of strings.
#[derive(Deserialize, Default)]
#[serde(untagged)]
enum OneOrMany {
    #[default]
    None,
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let values: &[String] = match self {
            Self::None => &[],
            Self::One(one) => std::slice::from_ref(one),
            Self::Many(many) => many,
        };
        values.iter().map(String::as_str)
    }
}

/// Parses a callers file; the error names the caller entry and the field at fault.
fn parse(text: &str) -> anyhow::Result<Callers> {
    let file: File = toml::from_str(text).context("not a valid callers file")?;
    let mut callers = Callers::default();
    for (position, entry) in file.caller.iter().enumerate() {
        let index = callers.callers.len();
        let at = || format!("[[caller]] number {} (name {:?})", position + 1, entry.name);
        if entry.name.trim().is_empty() {
            anyhow::bail!("{}: name must not be empty", at());
        }
        if callers.callers.iter().any(|c| c.name == entry.name) {
            anyhow::bail!("{}: another caller has the same name", at());
        }
        let allow = allow(&entry.allow).with_context(at)?;
        let mut recognised = false;
        for id in entry.spiffe_id.iter() {
            if !id.starts_with("spiffe://") {
                anyhow::bail!("{}: spiffe_id {id:?} must start with spiffe://", at());
            }
            unique(&mut callers.by_spiffe_id, id, index).with_context(at)?;
            recognised = true;
        }
        for name in entry.dns_name.iter() {
            if name.is_empty() {
                anyhow::bail!("{}: dns_name must not be empty", at());
            }
            unique(&mut callers.by_dns_name, &name.to_ascii_lowercase(), index).with_context(at)?;
            recognised = true;
        }
        for hex in entry.api_key_sha256.iter() {
            let hash = sha256_hex(hex).with_context(at)?;
            if callers.keys.iter().any(|(known, _)| *known == hash) {
                anyhow::bail!("{}: api_key_sha256 is also another caller's", at());
            }
            callers.keys.push((hash, index));
            recognised = true;
        }
        if !recognised {
            anyhow::bail!(
                "{}: give at least one of spiffe_id, dns_name, api_key_sha256",
                at()
            );
        }
        let create_rate = entry
            .create_rate
            .as_deref()
            .map(|text| text.parse::<Rate>())
            .transpose()
            .map_err(|error| anyhow::anyhow!("{}: create_rate: {error}", at()))?;
        callers
            .callers
            .push(Arc::new(Caller::new(&entry.name, allow, create_rate)));
    }
    Ok(callers)
}

fn unique(index: &mut HashMap<String, usize>, key: &str, caller: usize) -> anyhow::Result<()> {
    if index.insert(key.to_owned(), caller).is_some() {
        anyhow::bail!("{key:?} also names another caller");
    }
    Ok(())
}

fn allow(entries: &[String]) -> anyhow::Result<Allow> {
    if entries.is_empty() {
        anyhow::bail!("allow is empty: name the methods this caller may call");
    }
    let mut allow = Allow::default();
    for entry in entries {
        match entry.as_str() {
            "*" => allow.every_method = true,
            "reflection" => allow.reflection = true,
            EXT_AUTHZ => allow.methods[Rpc::Check as usize] = true,
            method => match Rpc::session_method(method) {
                Some(rpc) => allow.methods[rpc as usize] = true,
                None => anyhow::bail!(
                    "allow: unknown method {method:?}; expected one of {}, \"{EXT_AUTHZ}\", \"*\" or \"reflection\"",
                    Rpc::SESSION_SERVICE.map(Rpc::name).join(", ")
                ),
            },
        }
    }
    Ok(allow)
}

fn sha256_hex(hex: &str) -> anyhow::Result<[u8; 32]> {
    let digits = hex.as_bytes();
    if digits.len() != 64 {
        anyhow::bail!("api_key_sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum)");
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(digits.chunks_exact(2)) {
        let text = std::str::from_utf8(pair).ok();
        *byte = text
            .and_then(|text| u8::from_str_radix(text, 16).ok())
            .context("api_key_sha256 must be 64 hex digits")?;
    }
    Ok(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"sessiond_test-key";

    fn key_hash() -> String {
        Sha256::digest(KEY)
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect()
    }

    fn file() -> String {
        format!(
            r#"
            [[caller]]
            name = "edge"
            spiffe_id = "spiffe://cluster.local/ns/edge/sa/gateway"
            allow = ["Validate"]

            [[caller]]
            name = "login"
            dns_name = "login.auth.svc.cluster.local"
            allow = ["CreateSession", "Refresh", "Validate"]

            [[caller]]
            name = "account"
            api_key_sha256 = "{}"
            allow = ["*"]
            "#,
            key_hash()
        )
    }

    fn header(key: &[u8]) -> Vec<u8> {
        [b"Bearer ".as_slice(), key].concat()
    }

    #[test]
    fn a_key_is_matched_by_its_hash() {
        let callers = parse(&file()).expect("parses");
        let header = header(KEY);
        let caller = callers
            .identify(Credentials {
                authorization: Some(&header),
                peer: None,
            })
            .expect("recognised");
        assert_eq!(caller.name(), "account");
        assert!(caller.may(Target::Method(Rpc::RevokeUserSessions)));
        assert!(caller.may(Target::Method(Rpc::DeleteUserSessions)));
        assert!(!caller.may(Target::Reflection), "* is not reflection");
        assert!(!caller.may(Target::Method(Rpc::Check)), "* is not ExtAuthz");
    }

    #[test]
    fn ext_authz_allows_check_alone() {
        let callers = parse(
            "[[caller]]\nname = \"envoy\"\ndns_name = \"envoy.mesh\"\nallow = [\"ExtAuthz\"]",
        )
        .expect("parses");
        let peer = PeerIdentity::from_names(vec![], vec!["envoy.mesh".into()]);
        let envoy = callers
            .identify(Credentials {
                authorization: None,
                peer: Some(&peer),
            })
            .expect("recognised");
        assert!(envoy.may(Target::Method(Rpc::Check)));
        assert!(!envoy.may(Target::Method(Rpc::Validate)));
        assert!(Caller::anonymous().may(Target::Method(Rpc::Check)));
    }

    #[test]
    fn a_wrong_or_malformed_key_is_nobody() {
        let callers = parse(&file()).expect("parses");
        for header in [header(b"sessiond_other"), KEY.to_vec(), b"Bearer ".to_vec()] {
            let credentials = Credentials {
                authorization: Some(&header),
                peer: None,
            };
            assert!(callers.identify(credentials).is_none());
        }
    }

    #[test]
    fn a_certificate_is_matched_by_its_spiffe_id_or_dns_name() {
        let callers = parse(&file()).expect("parses");
        let edge = PeerIdentity::from_names(
            vec!["spiffe://cluster.local/ns/edge/sa/gateway".into()],
            vec![],
        );
        let login = PeerIdentity::from_names(vec![], vec!["login.auth.svc.cluster.local".into()]);
        let name = |peer: &PeerIdentity| {
            callers
                .identify(Credentials {
                    authorization: None,
                    peer: Some(peer),
                })
                .map(|caller| caller.name().to_owned())
        };
        assert_eq!(name(&edge).as_deref(), Some("edge"));
        assert_eq!(name(&login).as_deref(), Some("login"));
        assert_eq!(name(&PeerIdentity::from_names(vec![], vec![])), None);
    }

    #[test]
    fn paths_map_to_what_they_call() {
        assert_eq!(
            Target::of("/sessiond.v1.SessionService/Validate"),
            Target::Method(Rpc::Validate)
        );
        assert_eq!(
            Target::of("/sessiond.v1.SessionService/DeleteUserSessions"),
            Target::Method(Rpc::DeleteUserSessions)
        );
        assert_eq!(
            Target::of("/sessiond.v1.SessionService/Nope"),
            Target::UnknownMethod
        );
        assert_eq!(Target::of("/grpc.health.v1.Health/Check"), Target::Health);
        assert_eq!(
            Target::of("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            Target::Reflection
        );
        assert_eq!(
            Target::of("/envoy.service.auth.v3.Authorization/Check"),
            Target::Method(Rpc::Check)
        );
        assert_eq!(
            Target::of("/sessiond.v1.SessionService/Check"),
            Target::UnknownMethod,
            "Check is Envoy's, not a SessionService method"
        );
        assert_eq!(
            Target::of("/envoy.service.auth.v3.Authorization/Other"),
            Target::Other
        );
        assert_eq!(Target::of("/other.Service/Call"), Target::Other);
    }

    #[test]
    fn errors_name_the_caller_entry_and_the_field() {
        let cases = [
            (
                "[[caller]]\nname = \"a\"\napi_key_sha256 = \"abc\"\nallow = [\"Validate\"]",
                "\"a\"",
                "api_key_sha256",
            ),
            (
                "[[caller]]\nname = \"b\"\ndns_name = \"x\"\nallow = [\"Validat\"]",
                "\"b\"",
                "Validat",
            ),
            (
                "[[caller]]\nname = \"c\"\nallow = [\"Validate\"]",
                "\"c\"",
                "spiffe_id",
            ),
            (
                "[[caller]]\nname = \"h\"\ndns_name = \"x\"\nallow = [\"*\"]\ncreate_rate = \"lots\"",
                "\"h\"",
                "create_rate",
            ),
            (
                "[[caller]]\nname = \"d\"\nspiffe_id = \"https://x\"\nallow = [\"*\"]",
                "\"d\"",
                "spiffe://",
            ),
            (
                "[[caller]]\nname = \"e\"\ndns_name = \"x\"\nallow = [\"*\"]\n[[caller]]\nname = \"f\"\ndns_name = \"x\"\nallow = [\"*\"]",
                "\"f\"",
                "another caller",
            ),
            (
                "[[caller]]\nname = \"g\"\ndns_name = \"x\"\nallow = [\"*\"]\nrole = \"admin\"",
                "valid callers file",
                "role",
            ),
        ];
        for (text, names, field) in cases {
            let error = format!("{:#}", parse(text).expect_err(text));
            assert!(
                error.contains(names) && error.contains(field),
                "{text}: {error}"
            );
        }
    }
}
