//! The live cookie inventory: every cookie name the gateway has seen per registry file, in an
//! upstream `Set-Cookie` or in a request `Cookie` header, with counts, verdicts and the
//! attributes seen. Never a cookie's value.
//!
//! Cost on the request path: each proxy (one per worker and listener) records into its own
//! [`Shard`], behind a lock only that worker takes on the request path; readers (`/inventory`,
//! `/metrics`) merge the shards. A name the shard already knows costs one hash lookup of the
//! name bytes the filter reads, and no allocation. A name new to the shard goes through the
//! host's [`HostNames`], shared by all shards (the `max_names_per_host` cap and the first
//! sighting's log line); once a host is full its name set is frozen and read without a lock.
//!
//! What a name's registry entry is, and its suggestion, are not recorded: they are read from
//! the live registry when the inventory is shown, so they follow reloads.
//!
//! - [`attributes`]: a `Set-Cookie` header's name and attributes.
//! - [`knowledge`]: the bundled cookie knowledge base (Open Cookie Database) and its matching.
//! - [`page`]: `/inventory/{host}` as HTML.
//! - [`suggest`]: the `suggest` command: several gateways' inventories merged into `[[cookie]]`
//!   entries.

pub mod attributes;
pub mod knowledge;
pub mod page;
pub mod suggest;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use http::header::COOKIE;
use http::HeaderMap;
use serde::{Deserialize, Serialize};

use crate::config::InventoryConfig;
use crate::metrics::{HostLabel, Metrics};
use crate::policy::decide::{Known, Verdict};
use crate::policy::registry::{CookieMatcher, HostPolicy, Registry};
use knowledge::Suggestion;

/// Longest cookie name recorded; a longer one is counted in `overflow`.
pub const MAX_NAME_BYTES: usize = 256;
/// Distinct `Domain`, `Path` or `SameSite` values kept per name; more are not recorded.
pub const MAX_VALUES: usize = 8;
/// Longest attribute value recorded; longer ones are cut (at a character boundary).
pub const MAX_VALUE_BYTES: usize = 256;
/// Longest attributes part of a `Set-Cookie` remembered to skip re-reading the same attributes.
const MAX_REMEMBERED_ATTRIBUTES: usize = 512;

/// The process's inventory. Shared (`Arc`) by the proxies, the admin endpoint and the gateway.
pub struct Inventory {
    config: InventoryConfig,
    /// Every shard handed out, for merging on read.
    shards: Mutex<Vec<Arc<Mutex<ShardData>>>>,
    /// Per registry file: the names every shard has admitted.
    hosts: Mutex<foldhash::HashMap<PathBuf, Arc<HostNames>>>,
}

/// The names of one registry file seen by any shard: the cap's accounting and the once-only
/// first-sighting log. Taken only when a shard meets a name it does not know yet.
struct HostNames {
    names: Mutex<foldhash::HashSet<Box<[u8]>>>,
    /// Set once `names` reaches the cap. From then on the set never changes, so shards read
    /// this copy without taking the lock.
    full: OnceLock<foldhash::HashSet<Box<[u8]>>>,
}

/// What [`HostNames::admit`] said about a name.
enum Admission {
    /// First sighting in the process.
    New,
    /// Another shard has it already.
    Known,
    /// Not admitted: the host has `max_names_per_host` names.
    Full,
}

impl HostNames {
    fn admit(&self, name: &[u8], cap: usize) -> Admission {
        if let Some(full) = self.full.get() {
            return if full.contains(name) {
                Admission::Known
            } else {
                Admission::Full
            };
        }
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if names.contains(name) {
            return Admission::Known;
        }
        if names.len() >= cap {
            return Admission::Full;
        }
        names.insert(name.into());
        if names.len() >= cap {
            let _ = self.full.set(names.clone());
        }
        Admission::New
    }
}

/// One proxy's part of the inventory.
pub struct Shard {
    inventory: Arc<Inventory>,
    data: Arc<Mutex<ShardData>>,
}

#[derive(Default)]
struct ShardData {
    /// Address of the `HostPolicy` last seen for a host → index in `hosts`. The entry's
    /// `policy` is kept alive, so an address is never reused while it is in this map.
    by_policy: foldhash::HashMap<usize, usize>,
    hosts: Vec<ShardHost>,
}

struct ShardHost {
    /// The policy this host was last recorded under (a reload makes a new one).
    policy: Arc<HostPolicy>,
    global: Arc<HostNames>,
    /// Name → index in `slots`.
    index: foldhash::HashMap<Box<[u8]>, u32>,
    /// The names' records, in the order this shard met them.
    slots: Vec<(Box<[u8]>, NameStats)>,
    /// Slot of each `Set-Cookie` of the last response, in order ([`NOT_RECORDED`] for one not
    /// recorded); and of each cookie of the last request. Pages send the same cookies in the same
    /// order, so the slot at the same position is tried first (checked by name) before the hash
    /// lookup. The response's list also maps the filter's verdicts back to their slots.
    last_response: Vec<u32>,
    last_request: Vec<u32>,
    /// Sightings of names not recorded (cap reached, or a name longer than [`MAX_NAME_BYTES`]).
    overflow: u64,
}

/// A position in `last_response`/`last_request` whose name was not recorded.
const NOT_RECORDED: u32 = u32::MAX;
/// Positions remembered in `last_response`/`last_request`.
const MAX_REMEMBERED_POSITIONS: usize = 64;

/// Which remembered order a name comes in.
#[derive(Clone, Copy)]
enum Order {
    Response,
    Request,
}

impl ShardHost {
    /// The slot of `name`, trying the one at `pos` in the last response's or request's order
    /// first, and remembering the answer (or [`NOT_RECORDED`]) there for the next one.
    fn find(&mut self, name: &[u8], order: Order, pos: usize) -> Option<u32> {
        let list = match order {
            Order::Response => &self.last_response,
            Order::Request => &self.last_request,
        };
        if let Some(&i) = list.get(pos) {
            if i != NOT_RECORDED && attributes::same(&self.slots[i as usize].0, name) {
                return Some(i);
            }
        }
        let found = self.index.get(name).copied();
        self.remember(order, pos, found.unwrap_or(NOT_RECORDED));
        found
    }

    fn remember(&mut self, order: Order, pos: usize, slot: u32) {
        let list = match order {
            Order::Response => &mut self.last_response,
            Order::Request => &mut self.last_request,
        };
        if let Some(e) = list.get_mut(pos) {
            *e = slot;
        } else if pos == list.len() && pos < MAX_REMEMBERED_POSITIONS {
            list.push(slot);
        }
    }
}

/// What is known of one cookie name on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NameStats {
    /// `Set-Cookie` headers of this name from the upstream.
    pub set_count: u64,
    /// Times a request's `Cookie` header carried it.
    pub request_count: u64,
    /// `Set-Cookie` headers that went to the browser (kept, or would-drop in report-only) in
    /// responses to requests without the consent cookie.
    pub before_consent: u64,
    pub kept: u64,
    pub dropped: u64,
    pub would_drop: u64,
    /// Seconds since the epoch.
    pub first_seen: i64,
    pub last_seen: i64,
    pub domains: Vec<Box<str>>,
    pub paths: Vec<Box<str>>,
    pub samesite: Vec<Box<str>>,
    pub secure: bool,
    pub httponly: bool,
    /// Longest lifetime seen, in seconds; `None` while only session cookies (or deletions)
    /// were seen.
    pub lifetime: Option<i64>,
    /// The attributes part (after the first `;`) of the last `Set-Cookie` read, when short:
    /// an origin sends the same attributes on every response, and reading them again could
    /// add nothing (an `Expires` read earlier gave the longer lifetime). Its buffer is reused.
    last_attributes: Option<Vec<u8>>,
}

impl NameStats {
    fn new(now: i64) -> Self {
        NameStats {
            first_seen: now,
            last_seen: now,
            ..NameStats::default()
        }
    }

    fn seen(&mut self, now: i64) {
        if now > self.last_seen {
            self.last_seen = now;
        }
    }

    /// One `Set-Cookie` of this name, its attributes part as [`attributes::split`] gives it.
    fn set_cookie(&mut self, attrs: &[u8], now: i64) {
        self.set_count += 1;
        self.seen(now);
        if let Some(last) = &self.last_attributes {
            if attributes::same(last, attrs) {
                return;
            }
        }
        if attrs.len() <= MAX_REMEMBERED_ATTRIBUTES {
            match &mut self.last_attributes {
                Some(buf) => {
                    buf.clear();
                    buf.extend_from_slice(attrs);
                }
                None => self.last_attributes = Some(attrs.to_vec()),
            }
        }
        self.attributes(&attributes::read_attributes(&[], attrs, now));
    }

    fn attributes(&mut self, a: &attributes::Attributes<'_>) {
        if let Some(d) = a.domain {
            remember(&mut self.domains, d, true);
        }
        if let Some(p) = a.path {
            remember(&mut self.paths, p, false);
        }
        if let Some(s) = a.samesite {
            remember(&mut self.samesite, s, true);
        }
        self.secure |= a.secure;
        self.httponly |= a.httponly;
        if let Some(l) = a.lifetime.filter(|l| *l > 0) {
            self.lifetime = Some(self.lifetime.map_or(l, |m| m.max(l)));
        }
    }

    /// Adds `other` (the same name seen by another shard or another gateway).
    pub fn merge(&mut self, other: &NameStats) {
        self.set_count += other.set_count;
        self.request_count += other.request_count;
        self.before_consent += other.before_consent;
        self.kept += other.kept;
        self.dropped += other.dropped;
        self.would_drop += other.would_drop;
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        for (mine, theirs) in [
            (&mut self.domains, &other.domains),
            (&mut self.paths, &other.paths),
            (&mut self.samesite, &other.samesite),
        ] {
            for v in theirs {
                if mine.len() < MAX_VALUES && !mine.contains(v) {
                    mine.push(v.clone());
                }
            }
        }
        self.secure |= other.secure;
        self.httponly |= other.httponly;
        self.lifetime = match (self.lifetime, other.lifetime) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

/// Adds an attribute value to a bounded list unless it is there (compared without allocating;
/// case-insensitively for `Domain` and `SameSite`, as browsers read them).
fn remember(list: &mut Vec<Box<str>>, value: &[u8], ignore_case: bool) {
    let same = |v: &str| {
        if ignore_case {
            v.as_bytes().eq_ignore_ascii_case(value)
        } else {
            v.as_bytes() == value
        }
    };
    if list.len() >= MAX_VALUES || list.iter().any(|v| same(v)) {
        return;
    }
    let mut text = String::from_utf8_lossy(&value[..value.len().min(MAX_VALUE_BYTES)]).into_owned();
    // Lossy decoding may have grown it: cut again, at a character boundary.
    if text.len() > MAX_VALUE_BYTES {
        let mut end = MAX_VALUE_BYTES;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
    list.push(text.into_boxed_str());
}

impl Inventory {
    pub fn new(config: InventoryConfig) -> Self {
        Inventory {
            config,
            shards: Mutex::new(Vec::new()),
            hosts: Mutex::new(foldhash::HashMap::default()),
        }
    }

    /// Whether anything is recorded (`max_names_per_host` > 0).
    pub fn enabled(&self) -> bool {
        self.config.max_names_per_host > 0
    }

    pub fn config(&self) -> &InventoryConfig {
        &self.config
    }

    /// A new shard for one proxy; `None` when the inventory is off.
    pub fn shard(self: &Arc<Self>) -> Option<Shard> {
        if !self.enabled() {
            return None;
        }
        let data = Arc::new(Mutex::new(ShardData::default()));
        self.shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::clone(&data));
        Some(Shard {
            inventory: Arc::clone(self),
            data,
        })
    }

    fn host_names(&self, policy: &HostPolicy) -> Arc<HostNames> {
        let mut hosts = self.hosts.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(hosts.entry(policy.file.clone()).or_insert_with(|| {
            Arc::new(HostNames {
                names: Mutex::new(foldhash::HashSet::default()),
                full: OnceLock::new(),
            })
        }))
    }

    /// Every shard's record of one registry file, merged: names (sorted) and overflow.
    fn merged(&self, file: &std::path::Path) -> (BTreeMap<Box<[u8]>, NameStats>, u64, bool) {
        let shards: Vec<Arc<Mutex<ShardData>>> = self
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut names: BTreeMap<Box<[u8]>, NameStats> = BTreeMap::new();
        let mut overflow = 0;
        let mut any = false;
        for shard in shards {
            let data = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for h in data.hosts.iter().filter(|h| h.policy.file == file) {
                any = true;
                overflow += h.overflow;
                for (name, stats) in &h.slots {
                    match names.get_mut(name) {
                        Some(s) => s.merge(stats),
                        None => {
                            names.insert(name.clone(), stats.clone());
                        }
                    }
                }
            }
        }
        (names, overflow, any)
    }

    /// The registry files something was recorded for, with the policy each was last recorded
    /// under.
    fn recorded_files(&self) -> Vec<(PathBuf, Arc<HostPolicy>)> {
        let shards: Vec<Arc<Mutex<ShardData>>> = self
            .shards
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut files: BTreeMap<PathBuf, Arc<HostPolicy>> = BTreeMap::new();
        for shard in shards {
            let data = shard.lock().unwrap_or_else(PoisonError::into_inner);
            for h in &data.hosts {
                files
                    .entry(h.policy.file.clone())
                    .or_insert_with(|| Arc::clone(&h.policy));
            }
        }
        files.into_iter().collect()
    }

    /// `/inventory/{host}`: the inventory of the registry file `live` (the policy serving now)
    /// came from.
    pub fn host_view(&self, host: &str, live: &HostPolicy) -> HostInventory {
        let (names, overflow, _) = self.merged(&live.file);
        let kb = self.config.knowledge_base.then(knowledge::bundled);
        let cookies: Vec<CookieView> = names
            .iter()
            .map(|(name, stats)| CookieView::new(name, stats, live, kb))
            .collect();
        let registered = cookies.iter().filter(|c| c.registered).count();
        HostInventory {
            host: host.to_owned(),
            name: live.name.clone(),
            file: live.file.display().to_string(),
            mode: live.mode.as_str().to_owned(),
            max_names_per_host: self.config.max_names_per_host,
            knowledge_base: self.config.knowledge_base,
            names: cookies.len(),
            registered,
            unregistered: cookies.len() - registered,
            overflow,
            cookies,
        }
    }

    /// `/inventory`: every registry file of the live registry (with zero counts when nothing
    /// was seen yet), then every file a reload removed that has a record (judged by the policy
    /// it was last recorded under).
    pub fn summary(&self, registry: &Registry) -> InventorySummary {
        let mut hosts = Vec::new();
        let mut add = |policy: &HostPolicy, loaded: bool| {
            let view = self.host_view(&policy.name, policy);
            hosts.push(HostSummary {
                host: policy.name.clone(),
                file: view.file,
                loaded,
                names: view.names,
                registered: view.registered,
                unregistered: view.unregistered,
                overflow: view.overflow,
            });
        };
        for p in &registry.policies {
            add(p, true);
        }
        for (file, last) in self.recorded_files() {
            if !registry.policies.iter().any(|p| p.file == file) {
                add(&last, false);
            }
        }
        InventorySummary {
            max_names_per_host: self.config.max_names_per_host,
            knowledge_base: self.config.knowledge_base,
            hosts,
        }
    }

    /// Sets `consent_gateway_inventory_unregistered{host}` to the distinct unregistered names
    /// of each host, judged by `registry` (so a reload that registers a name lowers it).
    pub fn update_metrics(&self, registry: &Registry, metrics: &Metrics) {
        for h in self.summary(registry).hosts {
            metrics
                .inventory_unregistered
                .get_or_create(&HostLabel { host: h.host })
                .set(i64::try_from(h.unregistered).unwrap_or(i64::MAX));
        }
    }
}

impl Shard {
    /// Starts recording one request or response of `policy`'s host, at `now` (seconds since
    /// the epoch). The recorder holds this shard's lock: drop it before awaiting.
    pub fn recorder<'s>(&'s self, policy: &'s Arc<HostPolicy>, now: i64) -> Recorder<'s> {
        let mut data = self.data.lock().unwrap_or_else(PoisonError::into_inner);
        let key = Arc::as_ptr(policy) as usize;
        let host = match data.by_policy.get(&key) {
            Some(&i) if Arc::ptr_eq(&data.hosts[i].policy, policy) => i,
            _ => self.adopt(&mut data, policy, key),
        };
        Recorder {
            data,
            host,
            inventory: &self.inventory,
            policy,
            now,
            set_cookies: 0,
            verdicts: 0,
        }
    }

    /// Slow path, once per host and reload: finds the host by its file (or adds it) and
    /// remembers this policy for it.
    fn adopt(&self, data: &mut ShardData, policy: &Arc<HostPolicy>, key: usize) -> usize {
        let i = match data.hosts.iter().position(|h| h.policy.file == policy.file) {
            Some(i) => {
                let old = Arc::as_ptr(&data.hosts[i].policy) as usize;
                data.by_policy.remove(&old);
                data.hosts[i].policy = Arc::clone(policy);
                i
            }
            None => {
                data.hosts.push(ShardHost {
                    policy: Arc::clone(policy),
                    global: self.inventory.host_names(policy),
                    index: foldhash::HashMap::default(),
                    slots: Vec::new(),
                    last_response: Vec::new(),
                    last_request: Vec::new(),
                    overflow: 0,
                });
                data.hosts.len() - 1
            }
        };
        data.by_policy.insert(key, i);
        i
    }
}

/// Records into one shard for one host; holds the shard's lock.
pub struct Recorder<'s> {
    data: MutexGuard<'s, ShardData>,
    host: usize,
    inventory: &'s Inventory,
    policy: &'s HostPolicy,
    now: i64,
    /// `Set-Cookie` headers recorded so far by this recorder, and verdicts.
    set_cookies: usize,
    verdicts: usize,
}

impl Recorder<'_> {
    /// Every cookie name of the request's `Cookie` header(s).
    pub fn request_cookies(&mut self, headers: &HeaderMap) {
        let now = self.now;
        let mut pos = 0;
        for h in headers.get_all(COOKIE) {
            for name in attributes::cookie_names(h.as_bytes()) {
                self.with_stats(name, Order::Request, pos, |s| {
                    s.request_count += 1;
                    s.seen(now);
                });
                pos += 1;
            }
        }
    }

    /// One upstream `Set-Cookie` header: its name and attributes. Every header of the response,
    /// in order, each before its verdict ([`Recorder::verdict`]).
    pub fn set_cookie(&mut self, header: &[u8]) {
        let (name, attrs) = attributes::split(header);
        self.set_cookie_parts(name, attrs);
    }

    /// [`Recorder::set_cookie`] for a header already split as [`attributes::split`] splits it
    /// (the filter's [`crate::policy::set_cookie::SetCookie`] carries both parts).
    pub fn set_cookie_parts(&mut self, name: &[u8], attrs: &[u8]) {
        let now = self.now;
        let pos = self.set_cookies;
        self.set_cookies += 1;
        self.with_stats(name, Order::Response, pos, |s| s.set_cookie(attrs, now));
    }

    /// The filter's verdict on the next `Set-Cookie` passed to [`Recorder::set_cookie`] (its
    /// name says which); `no_consent`: the request carried no consent cookie.
    pub fn verdict(&mut self, name: &[u8], verdict: Verdict, no_consent: bool) {
        let pos = self.verdicts;
        self.verdicts += 1;
        let host = &mut self.data.hosts[self.host];
        let slot = match host.last_response.get(pos) {
            Some(&i) if i != NOT_RECORDED && attributes::same(&host.slots[i as usize].0, name) => {
                Some(i)
            }
            // Out of step with the headers recorded (never, as the proxy calls it): by name.
            _ => host.index.get(name).copied(),
        };
        let Some(i) = slot else {
            return; // not recorded (overflow)
        };
        let s = &mut host.slots[i as usize].1;
        match verdict {
            Verdict::Keep => s.kept += 1,
            Verdict::Drop => s.dropped += 1,
            Verdict::WouldDrop => s.would_drop += 1,
        }
        if no_consent && verdict != Verdict::Drop {
            s.before_consent += 1;
        }
    }

    /// Applies `f` to the name's record, creating it if the host may take one more name.
    fn with_stats(
        &mut self,
        name: &[u8],
        order: Order,
        pos: usize,
        f: impl FnOnce(&mut NameStats),
    ) {
        let cap = self.inventory.config.max_names_per_host;
        let host = &mut self.data.hosts[self.host];
        if let Some(i) = host.find(name, order, pos) {
            f(&mut host.slots[i as usize].1);
            return;
        }
        if name.len() > MAX_NAME_BYTES {
            host.overflow += 1;
            return;
        }
        match host.global.admit(name, cap) {
            Admission::Full => {
                host.overflow += 1;
                return;
            }
            Admission::New => first_sighting(self.inventory, self.policy, name, order),
            Admission::Known => {}
        }
        let Ok(i) = u32::try_from(host.slots.len()) else {
            host.overflow += 1;
            return;
        };
        let mut s = NameStats::new(self.now);
        f(&mut s);
        host.slots.push((name.into(), s));
        host.index.insert(name.into(), i);
        host.remember(order, pos, i);
    }
}

/// Logs the first sighting of an unregistered name in this process.
fn first_sighting(inventory: &Inventory, policy: &HostPolicy, name: &[u8], seen: Order) {
    if Known::of(policy, name).registered() {
        return;
    }
    let seen_in = match seen {
        Order::Response => "set-cookie",
        Order::Request => "request",
    };
    let suggestion = inventory
        .config
        .knowledge_base
        .then(|| knowledge::suggest_for(knowledge::bundled(), policy, name))
        .flatten()
        .map_or_else(
            || "none".to_owned(),
            |s| {
                format!(
                    "{} ({}, {} match on {:?}, retention {})",
                    s.category,
                    s.platform,
                    s.matched.as_str(),
                    s.entry,
                    s.retention
                )
            },
        );
    tracing::info!(
        host = %policy.name,
        cookie = %String::from_utf8_lossy(name),
        seen_in,
        suggestion,
        "first sighting of an unregistered cookie"
    );
}

// ---------------------------------------------------------------------------------------------
// What the admin endpoint shows (and `suggest` reads back).

/// `/inventory`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InventorySummary {
    pub max_names_per_host: usize,
    pub knowledge_base: bool,
    pub hosts: Vec<HostSummary>,
}

/// One registry file in `/inventory`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostSummary {
    /// The file's first host name (the `host` label of the metrics).
    pub host: String,
    pub file: String,
    /// The file is in the registry serving now.
    pub loaded: bool,
    pub names: usize,
    pub registered: usize,
    pub unregistered: usize,
    pub overflow: u64,
}

/// `/inventory/{host}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostInventory {
    /// The host asked for.
    pub host: String,
    /// The registry file's first host name.
    pub name: String,
    pub file: String,
    pub mode: String,
    pub max_names_per_host: usize,
    pub knowledge_base: bool,
    pub names: usize,
    pub registered: usize,
    pub unregistered: usize,
    /// Sightings of names not recorded because the cap was reached.
    pub overflow: u64,
    pub cookies: Vec<CookieView>,
}

/// One cookie name in `/inventory/{host}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CookieView {
    pub name: String,
    pub registered: bool,
    /// The registry entry that matches it.
    pub entry: Option<EntryView>,
    pub category: Option<String>,
    /// `set-cookie` and/or `request`.
    pub seen_in: Vec<String>,
    pub set_count: u64,
    pub request_count: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub before_consent: u64,
    pub verdicts: Verdicts,
    pub attributes: AttributesView,
    pub suggestion: Option<Suggestion>,
}

/// A registry entry: `{"name": ...}` or `{"prefix": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryView {
    Name(String),
    Prefix(String),
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdicts {
    pub kept: u64,
    pub dropped: u64,
    pub would_drop: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttributesView {
    pub domains: Vec<String>,
    pub paths: Vec<String>,
    pub samesite: Vec<String>,
    pub secure: bool,
    pub httponly: bool,
    /// Longest lifetime seen, in seconds; `null` for a session cookie.
    pub lifetime: Option<i64>,
}

impl CookieView {
    fn new(
        name: &[u8],
        s: &NameStats,
        policy: &HostPolicy,
        kb: Option<&knowledge::KnowledgeBase<'_>>,
    ) -> Self {
        let known = Known::of(policy, name);
        let mut seen_in = Vec::new();
        if s.set_count > 0 {
            seen_in.push("set-cookie".to_owned());
        }
        if s.request_count > 0 {
            seen_in.push("request".to_owned());
        }
        let at = |t: i64| {
            crate::rfc3339(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_secs(u64::try_from(t).unwrap_or(0)),
            )
        };
        let strings = |v: &[Box<str>]| v.iter().map(ToString::to_string).collect();
        CookieView {
            name: String::from_utf8_lossy(name).into_owned(),
            registered: known.registered(),
            entry: known.entry.map(|e| match &e.matcher {
                CookieMatcher::Name(n) => EntryView::Name(n.clone()),
                CookieMatcher::Prefix(p) => EntryView::Prefix(p.clone()),
            }),
            category: known.category().map(str::to_owned),
            seen_in,
            set_count: s.set_count,
            request_count: s.request_count,
            first_seen: at(s.first_seen),
            last_seen: at(s.last_seen),
            before_consent: s.before_consent,
            verdicts: Verdicts {
                kept: s.kept,
                dropped: s.dropped,
                would_drop: s.would_drop,
            },
            attributes: AttributesView {
                domains: strings(&s.domains),
                paths: strings(&s.paths),
                samesite: strings(&s.samesite),
                secure: s.secure,
                httponly: s.httponly,
                lifetime: s.lifetime,
            },
            suggestion: kb.and_then(|kb| knowledge::suggest_for(kb, policy, name)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(file: &str, extra: &str) -> Arc<HostPolicy> {
        Arc::new(
            crate::config::parse_host_file(
                std::path::Path::new(file),
                &format!(
                    "hosts = [\"t.test\"]\nupstream = \"http://127.0.0.1:1\"\n\
                     [[cookie]]\nname = \"sessionid\"\ncategory = \"necessary\"\n{extra}"
                ),
            )
            .unwrap(),
        )
    }

    fn inventory(cap: usize) -> Arc<Inventory> {
        Arc::new(Inventory::new(InventoryConfig {
            max_names_per_host: cap,
            knowledge_base: true,
        }))
    }

    #[test]
    fn shards_are_merged_on_read() {
        let inv = inventory(100);
        let p = policy("h/t.toml", "");
        let (a, b) = (inv.shard().unwrap(), inv.shard().unwrap());
        {
            let mut r = a.recorder(&p, 100);
            r.set_cookie(b"_ga=1; Max-Age=60; Domain=t.test");
            r.verdict(b"_ga", Verdict::Drop, true);
        }
        {
            let mut r = b.recorder(&p, 200);
            r.set_cookie(b"_ga=2; Max-Age=120; Secure");
            r.verdict(b"_ga", Verdict::Keep, true);
            let mut h = HeaderMap::new();
            h.insert(COOKIE, "_ga=x; sessionid=y".parse().unwrap());
            r.request_cookies(&h);
        }
        let v = inv.host_view("t.test", &p);
        assert_eq!((v.names, v.registered, v.unregistered), (2, 1, 1));
        let ga = v.cookies.iter().find(|c| c.name == "_ga").unwrap();
        assert_eq!((ga.set_count, ga.request_count), (2, 1));
        assert_eq!(ga.before_consent, 1, "the dropped one never went out");
        assert_eq!(
            ga.verdicts,
            Verdicts {
                kept: 1,
                dropped: 1,
                would_drop: 0
            }
        );
        assert_eq!(ga.first_seen, "1970-01-01T00:01:40Z");
        assert_eq!(ga.last_seen, "1970-01-01T00:03:20Z");
        assert_eq!(ga.attributes.lifetime, Some(120));
        assert_eq!(ga.attributes.domains, vec!["t.test"]);
        assert!(ga.attributes.secure && !ga.attributes.httponly);
        assert_eq!(ga.seen_in, vec!["set-cookie", "request"]);
        assert_eq!(ga.suggestion.as_ref().unwrap().category, "statistical");
        let sid = v.cookies.iter().find(|c| c.name == "sessionid").unwrap();
        assert_eq!(sid.entry, Some(EntryView::Name("sessionid".into())));
        assert_eq!(sid.suggestion, None);
    }

    #[test]
    fn the_cap_holds_across_shards_and_counts_overflow() {
        let inv = inventory(3);
        let p = policy("h/t.toml", "");
        let (a, b) = (inv.shard().unwrap(), inv.shard().unwrap());
        for (shard, names) in [(&a, ["n1", "n2"]), (&b, ["n3", "n4"]), (&a, ["n3", "n5"])] {
            let mut r = shard.recorder(&p, 1);
            for n in names {
                r.set_cookie(format!("{n}=v").as_bytes());
            }
        }
        let v = inv.host_view("t.test", &p);
        let names: Vec<&str> = v.cookies.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert_eq!(v.overflow, 2, "n4 and n5");
        // A name admitted before the host filled is still recorded by a shard new to it.
        b.recorder(&p, 2).set_cookie(b"n1=v");
        let v = inv.host_view("t.test", &p);
        assert_eq!(v.cookies[0].set_count, 2);
        assert_eq!(v.overflow, 2);
    }

    #[test]
    fn a_reload_keeps_the_record_and_the_view_follows_the_registry() {
        let inv = inventory(10);
        let old = policy("h/t.toml", "");
        let shard = inv.shard().unwrap();
        shard.recorder(&old, 1).set_cookie(b"messages=hi");
        assert!(!inv.host_view("t.test", &old).cookies[0].registered);
        let new = policy(
            "h/t.toml",
            "[[cookie]]\nname = \"messages\"\ncategory = \"necessary\"\n",
        );
        shard.recorder(&new, 2).set_cookie(b"messages=hi");
        let v = inv.host_view("t.test", &new);
        assert_eq!(v.names, 1);
        let m = &v.cookies[0];
        assert!(m.registered);
        assert_eq!(m.category.as_deref(), Some("necessary"));
        assert_eq!(m.set_count, 2);
    }

    #[test]
    fn verdicts_reach_their_names_whatever_the_order() {
        let inv = inventory(3);
        let p = policy("h/t.toml", "");
        let shard = inv.shard().unwrap();
        let response = |names: &[&str], verdicts: &[Verdict]| {
            let mut r = shard.recorder(&p, 1);
            for n in names {
                r.set_cookie(format!("{n}=v; Path=/").as_bytes());
            }
            for (n, v) in names.iter().zip(verdicts) {
                r.verdict(n.as_bytes(), *v, false);
            }
        };
        response(
            &["a", "b", "c"],
            &[Verdict::Keep, Verdict::Drop, Verdict::WouldDrop],
        );
        response(
            &["a", "b", "c"],
            &[Verdict::Keep, Verdict::Drop, Verdict::WouldDrop],
        );
        // Another order, a name past the cap in the middle, a shorter response, a repeat.
        response(
            &["c", "x", "a"],
            &[Verdict::Drop, Verdict::Keep, Verdict::Drop],
        );
        response(&["b"], &[Verdict::Keep]);
        response(&["b", "b"], &[Verdict::Keep, Verdict::Keep]);
        let v = inv.host_view("t.test", &p);
        let got: Vec<(String, u64, Verdicts)> = v
            .cookies
            .iter()
            .map(|c| (c.name.clone(), c.set_count, c.verdicts))
            .collect();
        let vd = |kept, dropped, would_drop| Verdicts {
            kept,
            dropped,
            would_drop,
        };
        assert_eq!(
            got,
            vec![
                ("a".into(), 3, vd(2, 1, 0)),
                ("b".into(), 5, vd(3, 2, 0)),
                ("c".into(), 3, vd(0, 1, 2)),
            ]
        );
        assert_eq!(v.overflow, 1);
    }

    #[test]
    fn off_means_no_shard() {
        assert!(inventory(0).shard().is_none());
    }

    #[test]
    fn attribute_lists_are_bounded_and_deduplicated() {
        let mut s = NameStats::new(0);
        let set = |s: &mut NameStats, h: &str| s.set_cookie(attributes::split(h.as_bytes()).1, 0);
        for i in 0..20 {
            set(
                &mut s,
                &format!("a=1; Domain=D{i}.test; Path=/p; SameSite=lax"),
            );
            set(&mut s, &format!("a=1; Domain=d{i}.TEST; SameSite=Lax"));
        }
        assert_eq!(s.domains.len(), MAX_VALUES);
        assert_eq!(s.paths.len(), 1);
        assert_eq!(s.samesite.len(), 1);
        let long = format!("a=1; Path=/{}", "é".repeat(400));
        set(&mut s, &long);
        assert!(s.paths[1].len() <= MAX_VALUE_BYTES);
    }

    #[test]
    fn the_same_attributes_are_read_once_and_new_ones_always() {
        let mut s = NameStats::new(0);
        let set =
            |s: &mut NameStats, h: &str, now| s.set_cookie(attributes::split(h.as_bytes()).1, now);
        let h = "a=1; Path=/; Expires=Thu, 01 Jan 1970 00:01:40 GMT";
        set(&mut s, h, 0);
        assert_eq!(s.lifetime, Some(100));
        // The same attributes later: the lifetime read first was the longer one.
        set(&mut s, h, 50);
        assert_eq!((s.set_count, s.lifetime, s.last_seen), (2, Some(100), 50));
        set(&mut s, "b=2; Path=/x; Secure", 60);
        assert_eq!(s.paths, ["/", "/x"].map(Box::from));
        assert!(s.secure);
        set(&mut s, h, 70);
        set(&mut s, "a=1", 70);
        set(&mut s, "a=1", 70);
        assert_eq!(s.set_count, 6);
        assert_eq!(s.paths.len(), 2);
    }
}
