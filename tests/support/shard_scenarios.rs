//! Several replicas with `sharding`, through the real binary, shared by `tests/daemon.rs` (the
//! test API server) and `integration/daemon.rs` (a real cluster): three replicas divide three
//! shards; a webhook and a sync sent to a replica that does not hold the tenant still sync it;
//! the status of any replica shows every unit with its owner; a replica killed with SIGKILL has
//! its tenants reconciled by the others within two lease durations. On the test server, each
//! replica authenticates as its own user, and the request log shows that a tenant's requests
//! only ever come from the replica that last wrote its shard's Lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::api::{Api, DeleteParams, DynamicObject, ListParams};
use serde_json::json;

use super::apply_scenarios::Env;
use super::cluster::resource;
use super::daemon::{Daemon, push};
use super::daemon_scenarios::{SECRET, TOKEN, cm, daemon_config};
use super::git::{Repo, free_port};

const SHARDS: u32 = 3;
/// The Leases' duration; replicas renew every third of it.
const LEASE: Duration = Duration::from_secs(6);

/// The product's tenant → shard assignment, written out again: FNV-1a 64 modulo the shards.
fn shard_of(tenant: &str) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(SHARDS)) as u32
}

fn bearer() -> Vec<(&'static str, String)> {
    vec![("Authorization", format!("Bearer {TOKEN}"))]
}

struct Replica {
    name: &'static str,
    daemon: Daemon,
}

/// Starts replica `name` (`replica-a`): its own config, state folder, port and, on the test
/// server, its own user.
fn start_replica(env: &Env, name: &'static str, extra: &str) -> Replica {
    let port = free_port();
    let config = format!("{name}.yaml");
    daemon_config(env, &config, port, extra);
    let path = env.dir.path().join(&config);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text = text.replace(
        "state_dir: .state\n",
        &format!("state_dir: .state-{name}\n"),
    );
    if let Some(log) = &env.log {
        // The same server, as a user of this replica's own.
        let admin = text
            .lines()
            .find_map(|l| l.strip_prefix("kubeconfig: "))
            .expect("a kubeconfig line")
            .to_string();
        let token = format!("{name}-token-{port}");
        log.add_user(&token, name, &["system:masters"]);
        let kubeconfig = std::fs::read_to_string(&admin).unwrap();
        let own: String = kubeconfig
            .lines()
            .map(|l| match l.trim_start().strip_prefix("token: ") {
                Some(_) => format!("    token: {token}\n"),
                None => format!("{l}\n"),
            })
            .collect();
        let own_path = env.dir.path().join(format!("kubeconfig-{name}"));
        std::fs::write(&own_path, own).unwrap();
        text = text.replace(
            &format!("kubeconfig: {admin}\n"),
            &format!("kubeconfig: {}\n", own_path.display()),
        );
    }
    std::fs::write(&path, text).unwrap();
    let mut daemon = Daemon::start(env.dir.path(), &config, port, &[("POD_NAME", name.into())]);
    daemon.token = Some(TOKEN.into());
    Replica { name, daemon }
}

/// Each shard's holder (the replica's name, from `<name>_<pid>`), `None` when free.
async fn holders(leases: &Api<DynamicObject>, prefix: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for s in 0..SHARDS {
        let holder = leases
            .get_opt(&format!("{prefix}-shard-{s}"))
            .await
            .unwrap()
            .and_then(|l| {
                serde_json::to_value(l).unwrap()["spec"]["holderIdentity"]
                    .as_str()
                    .map(String::from)
            })
            .filter(|h| !h.is_empty())
            .map(|h| h.split('_').next().unwrap().to_string());
        out.push(holder);
    }
    out
}

async fn wait_holders(
    leases: &Api<DynamicObject>,
    prefix: &str,
    what: &str,
    within: Duration,
    ok: impl Fn(&[Option<String>]) -> bool,
) -> Vec<Option<String>> {
    let deadline = Instant::now() + within;
    loop {
        let h = holders(leases, prefix).await;
        if ok(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; the shards' holders: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn wait_value(env: &Env, ns: &str, want: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if env
            .configmap(ns, "a")
            .await
            .is_some_and(|o| o["data"]["v"] == want)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{ns}/a did not get v={want} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub async fn shards_divide_the_tenants_and_move_when_a_replica_dies(env: Arc<Env>) {
    // Six tenants, two in each shard, each with app `a` from a Git repository of its own (a
    // webhook names it).
    let mut per_shard = [0; SHARDS as usize];
    let names: Vec<String> = (0..)
        .map(|i| env.name(&format!("shard{i}")))
        .filter(|t| {
            let s = &mut per_shard[shard_of(t) as usize];
            *s += 1;
            *s <= 2
        })
        .take(2 * SHARDS as usize)
        .collect();
    let mut tenants = Vec::new();
    let mut repos = BTreeMap::new();
    for t in names {
        let repo = Repo::init(&env.dir.path().join(format!("repos/{t}")));
        repo.write("cm.yaml", &cm("a", "0"));
        repo.commit("v0");
        env.tenant(
            &t,
            &[&t],
            "limits: { schemes: [file] }\n",
            &format!(
                "apps:\n  - {{ name: a, enabled: true, source: {{ url: {}, ref: {{ branch: main }} }} }}\n",
                repo.url()
            ),
        );
        repos.insert(t.clone(), repo);
        tenants.push(t);
    }
    let prefix = env.name("flotilla-sh");
    let extra = format!(
        "sharding: {{ shards: {SHARDS}, namespace: kube-system, name: {prefix}, lease_duration: {}s }}\n",
        LEASE.as_secs()
    );
    let leases: Api<DynamicObject> = Api::namespaced_with(
        env.cluster.admin.clone(),
        "kube-system",
        &resource("coordination.k8s.io/v1", "Lease", "leases"),
    );
    let outcome = tokio::spawn(run(env.clone(), tenants, repos, prefix.clone(), extra));
    let result = outcome.await;
    // The Leases are the scenario's to delete, whatever happened.
    if let Ok(list) = leases.list(&ListParams::default()).await {
        for l in list.items {
            let name = l.metadata.name.unwrap_or_default();
            if name.starts_with(&format!("{prefix}-")) {
                let _ = leases.delete(&name, &DeleteParams::default()).await;
            }
        }
    }
    if let Err(e) = result {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run(
    env: Arc<Env>,
    tenants: Vec<String>,
    repos: BTreeMap<String, Repo>,
    prefix: String,
    extra: String,
) {
    let leases: Api<DynamicObject> = Api::namespaced_with(
        env.cluster.admin.clone(),
        "kube-system",
        &resource("coordination.k8s.io/v1", "Lease", "leases"),
    );
    // One replica alone takes every shard and syncs every tenant.
    let mut replicas = vec![start_replica(&env, "replica-a", &extra)];
    wait_holders(
        &leases,
        &prefix,
        "replica-a holds every shard",
        LEASE * 5,
        |h| h.iter().all(|h| h.as_deref() == Some("replica-a")),
    )
    .await;
    for t in &tenants {
        wait_value(&env, t, "0", Duration::from_secs(60)).await;
    }

    // Two more: the shards spread, one each; every replica is ready.
    replicas.push(start_replica(&env, "replica-b", &extra));
    replicas.push(start_replica(&env, "replica-c", &extra));
    let spread = wait_holders(
        &leases,
        &prefix,
        "the shards spread over three replicas",
        LEASE * 6,
        |h| {
            let held: BTreeSet<_> = h.iter().flatten().collect();
            held.len() == 3 && h.iter().all(Option::is_some)
        },
    )
    .await;
    for r in &replicas {
        r.daemon.wait_ready(Duration::from_secs(30)).await;
    }
    let owner_of = |t: &str, holders: &[Option<String>]| {
        holders[shard_of(t) as usize].clone().expect("a holder")
    };
    let replica = |name: &str| {
        &replicas
            .iter()
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("no replica {name}"))
            .daemon
    };
    // A tenant of some shard, and a replica that does not hold it.
    let pick = |holders: &[Option<String>], not: &str| {
        let t = tenants
            .iter()
            .find(|t| owner_of(t, holders) != not)
            .expect("a tenant held elsewhere")
            .clone();
        (t.clone(), owner_of(&t, holders))
    };

    // The status of any replica: every unit, each with the replica that owns it, converged;
    // every replica sees the same holders.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut agree = true;
        for r in &replicas {
            let seen = r.daemon.status(TOKEN).await["sharding"]["holders"].clone();
            let seen: Vec<Option<String>> = serde_json::from_value(seen).unwrap();
            let seen: Vec<Option<String>> = seen
                .into_iter()
                .map(|h| h.map(|h| h.split('_').next().unwrap().to_string()))
                .collect();
            agree &= seen == spread;
        }
        let status = replica("replica-c").status(TOKEN).await;
        let units = status["units"].as_array().cloned().unwrap_or_default();
        let ready = tenants.iter().all(|t| {
            units.iter().any(|u| {
                u["unit"] == format!("{t}/a")
                    && u["result"] == "converged"
                    && u["owner"]
                        .as_str()
                        .is_some_and(|o| o.starts_with(&format!("{}_", owner_of(t, &spread))))
            })
        });
        if ready && agree {
            assert!(
                status["sharding"]["unreachable"]
                    .as_array()
                    .unwrap()
                    .is_empty(),
                "{status:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every unit converged with its owner: {status:#}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // A webhook sent to a replica that does not hold the tenant's shard still syncs it.
    let (t, holder) = pick(&spread, "replica-a");
    let repo = &repos[&t];
    repo.write("cm.yaml", &cm("a", "1"));
    repo.commit("v1");
    let (headers, body) = push("github", &repo.url(), "main", SECRET);
    let via_a = replica("replica-a")
        .http("POST", "/hooks/github", &headers, body)
        .await
        .unwrap();
    assert!(via_a.status == 200 || via_a.status == 202, "{via_a:?}");
    wait_value(&env, &t, "1", Duration::from_secs(30)).await;
    assert!(
        replica(&holder).logs().contains("webhook push accepted"),
        "the holder {holder} never took the webhook:\n{}",
        replica(&holder).logs()
    );

    // A sync of a tenant held elsewhere is forwarded, its answer streamed back.
    let (u, _) = pick(&spread, "replica-b");
    let repo = &repos[&u];
    repo.write("cm.yaml", &cm("a", "2"));
    repo.commit("v2");
    let forwarded = replica("replica-b")
        .http(
            "POST",
            "/api/v1/sync",
            &bearer(),
            serde_json::to_vec(&json!({"tenant": u, "wait": true})).unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        forwarded.status,
        200,
        "{forwarded:?}\n{}",
        replica("replica-b").logs()
    );
    assert!(
        forwarded.body.contains(&format!("tenant {u}, app a")),
        "{forwarded:?}"
    );
    assert!(
        forwarded
            .body
            .trim_end()
            .ends_with(r#"{"event":"done","ok":true}"#),
        "{forwarded:?}"
    );
    wait_value(&env, &u, "2", Duration::from_secs(5)).await;
    // A sync of everything, through one replica, is one answer from all three.
    let all = replica("replica-a")
        .http(
            "POST",
            "/api/v1/sync",
            &bearer(),
            serde_json::to_vec(&json!({"wait": true})).unwrap(),
        )
        .await
        .unwrap();
    let shard_lines = |n: &str| -> String {
        replica(n)
            .logs()
            .lines()
            .filter(|l| l.contains("shard"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(all.status, 200, "{all:?}");
    if !all.body.contains(r#""ok":true"#) {
        eprintln!(
            "A:\n{}\nB:\n{}\nstatus {:#}",
            shard_lines("replica-a"),
            shard_lines("replica-b"),
            replica("replica-a").status(TOKEN).await["sharding"]
        );
    }
    for t in &tenants {
        assert!(
            all.body.contains(&format!("tenant {t}, app a")),
            "{t}: {all:?}"
        );
    }
    assert_eq!(all.body.matches(r#""event":"done""#).count(), 1, "{all:?}");
    assert!(
        all.body
            .trim_end()
            .ends_with(r#"{"event":"done","ok":true}"#),
        "{all:?}"
    );

    // SIGKILL the holder of a tenant's shard: within two lease durations another replica holds
    // it, and the tenant's ConfigMap, deleted meanwhile, is back.
    let victim = owner_of(&tenants[0], &spread);
    let killed_shard = shard_of(&tenants[0]);
    let at = replicas.iter().position(|r| r.name == victim).unwrap();
    let mut gone = replicas.remove(at);
    gone.daemon.signal("KILL");
    let killed = Instant::now();
    gone.daemon.wait_exit(Duration::from_secs(10)).await;
    let victims: Vec<&String> = tenants
        .iter()
        .filter(|t| owner_of(t, &spread) == victim)
        .collect();
    for t in &victims {
        let cms: Api<DynamicObject> = Api::namespaced_with(
            env.cluster.admin.clone(),
            t,
            &resource("v1", "ConfigMap", "configmaps"),
        );
        cms.delete("a", &DeleteParams::default()).await.unwrap();
    }
    // Meanwhile the status, on a replica left, names the dead one as unreachable and its units
    // as unknown, still owned by it.
    let survivor = &replicas[0].daemon;
    let status = survivor.status(TOKEN).await;
    let unreachable = status["sharding"]["unreachable"].as_array().unwrap();
    assert!(
        unreachable
            .iter()
            .any(|u| u.as_str().unwrap().starts_with(&format!("{victim}_"))),
        "{status:#}"
    );
    for t in &victims {
        let unit = status["units"]
            .as_array()
            .unwrap()
            .iter()
            .find(|u| u["unit"] == format!("{t}/a"))
            .unwrap_or_else(|| panic!("{t}/a missing: {status:#}"));
        assert_eq!(unit["result"], "unknown", "{status:#}");
        assert!(
            unit["owner"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{victim}_")),
            "{status:#}"
        );
    }
    let after = wait_holders(
        &leases,
        &prefix,
        "the dead replica's shard taken over",
        LEASE * 2,
        |h| h.iter().all(|h| h.as_ref().is_some_and(|h| *h != victim)),
    )
    .await;
    let took_over = killed.elapsed();
    for t in &victims {
        // The shard moved within two lease durations (above); its full round gets a few
        // seconds more on a loaded machine (about a second here).
        let deadline = killed + LEASE * 2 + Duration::from_secs(5);
        loop {
            if env.configmap(t, "a").await.is_some() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{t}/a not reconciled within two lease durations (and 5 s) of the kill; holders {after:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    eprintln!(
        "shard {killed_shard} of {victim} taken over after {took_over:?}, its tenants reconciled after {:?}",
        killed.elapsed()
    );
    // The two left hold the three shards between them, two and one.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for h in after.iter().flatten() {
        *counts.entry(h.as_str()).or_default() += 1;
    }
    let mut spread_now: Vec<usize> = counts.values().copied().collect();
    spread_now.sort();
    assert_eq!(spread_now, vec![1, 2], "{after:?}");

    // On the test server: a tenant's requests came only from the replica that holds its shard
    // by the last write of the shard's Lease (a write with no holder gives it up; the
    // onboarding's access probe, shard 0's, aside).
    if let Some(log) = &env.log {
        let requests = log.requests();
        let shard_lease = |s: u32| format!("{prefix}-shard-{s}");
        let mut last_writer: BTreeMap<u32, String> = BTreeMap::new();
        let mut checked = 0;
        for r in &requests {
            for s in 0..SHARDS {
                let lease = shard_lease(s);
                let wrote = (200..300).contains(&r.status)
                    && ((r.method == "PUT"
                        && r.path
                            .split('?')
                            .next()
                            .unwrap()
                            .ends_with(&format!("/leases/{lease}")))
                        || (r.method == "POST" && r.created.as_deref() == Some(lease.as_str())));
                if wrote {
                    match r.holder.as_deref() {
                        Some("") | None => last_writer.remove(&s),
                        Some(_) => last_writer.insert(s, r.user.clone()),
                    };
                }
            }
            let Some(sa) = &r.impersonated else { continue };
            let Some(t) = tenants
                .iter()
                .find(|t| sa.starts_with(&format!("system:serviceaccount:{t}:")))
            else {
                continue;
            };
            if r.path.contains("probe") {
                continue;
            }
            let s = shard_of(t);
            assert_eq!(
                last_writer.get(&s),
                Some(&r.user),
                "{} {} for tenant {t} (shard {s}) by {} while the shard's Lease was held by {:?}",
                r.method,
                r.path,
                r.user,
                last_writer.get(&s)
            );
            checked += 1;
        }
        assert!(
            checked > tenants.len() * 3,
            "too few tenant requests checked: {checked}"
        );
        let users: BTreeSet<&str> = requests.iter().map(|r| r.user.as_str()).collect();
        for name in ["replica-a", "replica-b", "replica-c"] {
            assert!(users.contains(name), "no request by {name}: {users:?}");
        }
    }
}
