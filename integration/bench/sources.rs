//! Git source figures (a benchmark that prints numbers, not a timed test):
//!
//! - a no-change poll of 50 repositories on `git daemon` (target: one ref listing per repo, no
//!   fetch, under 1 s in total), all at once as the agent does, and one after another;
//! - the time to fetch and check out a new commit.
//!
//! Run: `cargo bench --bench sources`

// Benchmarks block on purpose; the rule against blocking sleeps (clippy.toml) is for `src/`.
#![allow(clippy::disallowed_methods)]

#[path = "../../tests/support/git.rs"]
#[allow(dead_code)]
mod git;

use std::time::{Duration, Instant};

use flotilla::config::{Config, GitRef, SourceLocation, SourceSpec};
use flotilla::source::Sources;

const REPOS: usize = 50;

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("served");
    let repos: Vec<git::Repo> = (0..REPOS)
        .map(|i| {
            let repo = git::Repo::init(&served.join(format!("r{i}")));
            for f in 0..20 {
                repo.write(&format!("apps/app{f}/deploy.yaml"), &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: c{f} }}\ndata: {{ repo: \"{i}\" }}\n"));
            }
            repo.commit("initial");
            repo
        })
        .collect();
    let daemon = git::GitDaemon::start(&served, &dir.path().join("daemon.log"));
    std::fs::create_dir_all(dir.path().join("fleet")).unwrap();
    let config_file = dir.path().join("flotilla.yaml");
    std::fs::write(
        &config_file,
        "cluster: bench\nfleet: { dir: fleet }\nstate_dir: state\n",
    )
    .unwrap();
    let sources = std::sync::Arc::new(Sources::new(&Config::load(&config_file).unwrap()));
    let specs: Vec<SourceSpec> = (0..REPOS)
        .map(|i| SourceSpec {
            location: SourceLocation::Url(daemon.url(&format!("r{i}"))),
            reference: GitRef::Branch("main".into()),
            path: None,
            credentials: None,
            verify: None,
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();

    let all_at_once = |label: &str| -> Duration {
        let start = Instant::now();
        runtime.block_on(async {
            let tasks: Vec<_> = specs
                .iter()
                .cloned()
                .map(|spec| {
                    let sources = sources.clone();
                    tokio::spawn(async move { sources.fetch(&spec).await.map(|c| c.revision) })
                })
                .collect();
            for t in tasks {
                t.await.unwrap().unwrap_or_else(|e| panic!("{label}: {e}"));
            }
        });
        start.elapsed()
    };

    let t = all_at_once("initial fetch");
    println!(
        "initial fetch and checkout of {REPOS} repos (20 files each), all at once: {:.0} ms",
        t.as_secs_f64() * 1e3
    );

    let before = daemon.upload_packs();
    let t = all_at_once("poll");
    let requests = daemon.upload_packs() - before;
    println!(
        "no-change poll of {REPOS} repos on git daemon, all at once: {:.0} ms ({requests} upload-pack connections: {} per repo, no fetch)",
        t.as_secs_f64() * 1e3,
        requests as f64 / REPOS as f64
    );
    assert_eq!(
        requests, REPOS,
        "a no-change poll is one ref listing per repo"
    );

    let before = daemon.upload_packs();
    let start = Instant::now();
    runtime.block_on(async {
        for spec in &specs {
            sources.fetch(spec).await.unwrap();
        }
    });
    let t = start.elapsed();
    assert_eq!(daemon.upload_packs() - before, REPOS);
    println!(
        "no-change poll of {REPOS} repos on git daemon, one after another: {:.0} ms",
        t.as_secs_f64() * 1e3
    );

    // A new commit in one repo: listing, fetch, checkout.
    let mut times = Vec::new();
    for n in 0..5 {
        repos[0].write("apps/app0/deploy.yaml", &format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{ name: c0 }}\ndata: {{ n: \"{n}\" }}\n"));
        let head = repos[0].commit("change");
        let start = Instant::now();
        let c = runtime.block_on(sources.fetch(&specs[0])).unwrap();
        times.push(start.elapsed());
        assert_eq!(c.revision, head);
    }
    times.sort();
    println!(
        "fetch and check out a new commit (20 files): median {:.1} ms, best {:.1} ms (5 runs)",
        times[2].as_secs_f64() * 1e3,
        times[0].as_secs_f64() * 1e3
    );
}
