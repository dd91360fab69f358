//! The status page's HTML, written from the agent's snapshot: every value escaped, no inline
//! script or style (the page's policy forbids both), times as `<time datetime>` in UTC that the
//! script shows in the browser's time zone.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::Filters;
use crate::agent::status::{Inspection, SyncRecord, UnitStatus};
use crate::agent::{Snapshot, unit_name};
use crate::fleet::UnitId;
use crate::pipeline::short;

/// The results a unit can have, in the order the counts show them.
const RESULTS: [&str; 5] = ["failed", "held-back", "pending", "suspended", "converged"];

/// Text made safe for HTML text and quoted attributes.
pub(super) fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// What every page shows around its content.
pub(super) struct Page<'a> {
    pub title: &'a str,
    pub csrf: &'a str,
    /// A session cookie let the request in: offer to log out.
    pub logout: bool,
    pub snapshot: &'a Snapshot,
}

fn shell(page: &Page, kind: &str, content: &str) -> String {
    let s = page.snapshot;
    let cluster = esc(&s.config.cluster);
    let fleet = s
        .status
        .fleet_revision
        .as_deref()
        .map(|r| {
            format!(
                "<span title=\"{}\">fleet @ {}</span>",
                esc(r),
                esc(short(r))
            )
        })
        .unwrap_or_default();
    let role = if s.leader {
        ""
    } else {
        "<span class=\"badge r-pending\">not the leader: this replica does not sync</span>"
    };
    let logout = if page.logout {
        "<form method=\"post\" action=\"/ui/logout\" class=\"logout\"><button type=\"submit\">Log out</button></form>"
    } else {
        ""
    };
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"flotilla-csrf\" content=\"{csrf}\">\
         <title>{title} · flotilla · {cluster}</title>\
         <link rel=\"stylesheet\" href=\"/ui/page.css\"><script src=\"/ui/page.js\" defer></script>\
         </head><body data-page=\"{kind}\"><header><a href=\"/\" class=\"brand\">flotilla</a>\
         <span>cluster <b>{cluster}</b></span>{fleet}{role}{logout}</header>\n{content}\n</body></html>\n",
        csrf = esc(page.csrf),
        title = esc(page.title),
    )
}

/// `<time>` in UTC; the script shows it in the browser's time zone.
fn time(t: Option<&str>) -> String {
    match t.filter(|t| !t.is_empty()) {
        Some(t) => format!("<time datetime=\"{0}\">{0}</time>", esc(t)),
        None => "<span class=\"none\">–</span>".into(),
    }
}

fn badge(result: &str) -> String {
    let label = if result == "held-back" {
        "held back"
    } else {
        result
    };
    format!(
        "<span class=\"badge r-{}\">{}</span>",
        esc(result),
        esc(label)
    )
}

fn revision(r: Option<&str>) -> String {
    match r {
        Some(r) => format!("<code title=\"{}\">{}</code>", esc(r), esc(short(r))),
        None => "<span class=\"none\">–</span>".into(),
    }
}

/// The query naming a unit: `tenant=ai&app=shop`, or `app=infra`.
pub(super) fn unit_query(id: &UnitId) -> String {
    let mut pairs = Vec::new();
    if let Some(t) = &id.tenant {
        pairs.push(("tenant", t.as_str()));
    }
    pairs.push(("app", id.app.as_str()));
    serde_urlencoded::to_string(pairs).unwrap_or_default()
}

/// The sync button's data: the API's sync body.
fn sync_button(label: &str, tenant: Option<&str>, app: Option<&str>) -> String {
    let mut attrs = String::new();
    if let Some(t) = tenant {
        let _ = write!(attrs, " data-tenant=\"{}\"", esc(t));
    }
    if let Some(a) = app {
        let _ = write!(attrs, " data-app=\"{}\"", esc(a));
    }
    format!("<button type=\"button\" class=\"sync\" data-sync{attrs}>{label}</button>")
}

fn objects(s: &UnitStatus) -> String {
    let mut text = format!("{} applied · {} pruned", s.applied, s.pruned);
    if s.failed > 0 {
        let _ = write!(text, " · <b class=\"bad\">{} failed</b>", s.failed);
    } else {
        text.push_str(" · 0 failed");
    }
    text
}

/// Every unit's status, by its id.
fn statuses(snapshot: &Snapshot) -> BTreeMap<UnitId, UnitStatus> {
    snapshot
        .status
        .plans
        .keys()
        .cloned()
        .zip(snapshot.report().units)
        .collect()
}

/// Whether a unit's row passes the filters (a row filtered out is sent `hidden`).
fn shown(f: &Filters, tenant: Option<&str>, s: &UnitStatus) -> bool {
    let q = f.q.trim().to_lowercase();
    tenant_shown(f, tenant)
        && (f.result.is_empty() || s.result == f.result)
        && (q.is_empty() || search_text(s).contains(&q))
}

fn tenant_shown(f: &Filters, tenant: Option<&str>) -> bool {
    f.tenant.is_empty() || tenant.unwrap_or("") == f.tenant
}

/// What the text search looks in.
fn search_text(s: &UnitStatus) -> String {
    [
        s.unit.as_str(),
        s.source.as_deref().unwrap_or(""),
        s.revision.as_deref().unwrap_or(""),
        s.result.as_str(),
        s.last_error.as_deref().unwrap_or(""),
    ]
    .join(" ")
    .to_lowercase()
}

/// The fleet page: filters, the sync panel and the live part.
pub(super) fn fleet(page: &Page, f: &Filters, live: &str) -> String {
    let tenants = &page.snapshot.status.tenants;
    let mut options = String::from("<option value=\"\">all tenants</option>");
    for t in tenants {
        let selected = if *t == f.tenant { " selected" } else { "" };
        let _ = write!(
            options,
            "<option value=\"{0}\"{selected}>{0}</option>",
            esc(t)
        );
    }
    let mut results = String::from("<option value=\"\">all results</option>");
    for r in RESULTS {
        let selected = if r == f.result { " selected" } else { "" };
        let _ = write!(
            results,
            "<option value=\"{r}\"{selected}>{}</option>",
            r.replace('-', " ")
        );
    }
    let content = format!(
        "<main><form class=\"filters\" method=\"get\" action=\"/\" id=\"filters\">\
         <label>Tenant <select name=\"tenant\" id=\"f-tenant\">{options}</select></label>\
         <label>Result <select name=\"result\" id=\"f-result\">{results}</select></label>\
         <label class=\"grow\">Search <input type=\"search\" name=\"q\" id=\"f-q\" value=\"{q}\" \
         placeholder=\"unit, source, revision, error\"></label>\
         <button type=\"submit\" class=\"nojs\">Filter</button></form>\
         {panel}<div id=\"live\">{live}</div></main>",
        q = esc(&f.q),
        panel = SYNC_PANEL,
    );
    shell(page, "fleet", &content)
}

/// Where a sync's progress is shown.
const SYNC_PANEL: &str = "<section id=\"sync-panel\" class=\"panel\" hidden><h2>Sync</h2>\
                          <ol id=\"sync-log\"></ol></section>";

/// The fleet page's live part: the counts, the fleet's error, and every unit by tenant (the
/// infra units first, then each tenant's onboarding and apps).
pub(super) fn fleet_live(snapshot: &Snapshot, f: &Filters) -> String {
    let status = &snapshot.status;
    let units = statuses(snapshot);
    let mut out = String::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for s in units.values() {
        *counts.entry(s.result.as_str()).or_default() += 1;
    }
    out.push_str("<nav class=\"counts\" id=\"counts\">");
    let _ = write!(
        out,
        "<a href=\"/\" data-result=\"\" class=\"count\"><b>{}</b> units</a>",
        units.len()
    );
    for r in RESULTS {
        let n = counts.get(r).copied().unwrap_or(0);
        let _ = write!(
            out,
            "<a href=\"/?result={r}\" data-result=\"{r}\" class=\"count r-{r}\"><b>{n}</b> {}</a>",
            r.replace('-', " ")
        );
    }
    out.push_str("</nav>");
    if let Some(e) = &status.error {
        let _ = write!(
            out,
            "<div class=\"alert\"><b>The fleet's last round failed</b><pre>{}</pre></div>",
            esc(e)
        );
    }
    if !status.ready && snapshot.leader {
        out.push_str("<p class=\"note\">The first round has not finished yet.</p>");
    }
    if units.is_empty() {
        out.push_str("<p class=\"note\">No units are placed on this cluster (yet).</p>");
    }
    let mut groups: BTreeMap<Option<&str>, Vec<(&UnitId, &UnitStatus)>> = BTreeMap::new();
    for (id, s) in &units {
        groups
            .entry(id.tenant.as_deref())
            .or_default()
            .push((id, s));
    }
    for t in &status.tenants {
        groups.entry(Some(t.as_str())).or_default();
    }
    for (tenant, members) in groups {
        // As the script decides: a group shows if a row of it does, or, empty, if only the
        // tenant is filtered on.
        let onboarding = tenant.and_then(|t| status.onboarding.get(t));
        let rows = || {
            onboarding
                .into_iter()
                .chain(members.iter().map(|(_, s)| *s))
        };
        let any_shown = rows().any(|s| shown(f, tenant, s));
        let empty_shown = rows().next().is_none()
            && f.result.is_empty()
            && f.q.trim().is_empty()
            && tenant_shown(f, tenant);
        let hidden = if any_shown || empty_shown {
            ""
        } else {
            " hidden"
        };
        let (title, button) = match tenant {
            Some(t) => (
                format!("tenant <b>{}</b>", esc(t)),
                sync_button("Sync tenant", Some(t), None),
            ),
            None => ("cluster <b>infra</b>".to_string(), String::new()),
        };
        let _ = write!(
            out,
            "<section class=\"group\" data-tenant=\"{}\"{hidden}><h2>{title} {button}</h2>\
             <table class=\"units\"><thead><tr><th>Unit</th><th>Source</th><th>Revision</th>\
             <th>Result</th><th>Objects (last sync)</th><th>Last run</th><th>Next run</th></tr></thead>",
            esc(tenant.unwrap_or(""))
        );
        if let Some(o) = onboarding {
            out.push_str(&row(tenant, None, o, f));
        }
        for (id, s) in members {
            out.push_str(&row(tenant, Some(id), s, f));
        }
        out.push_str("</table></section>");
    }
    out
}

/// One unit (or onboarding, `id` `None`) as a `<tbody>`: its row, and its error in full.
fn row(tenant: Option<&str>, id: Option<&UnitId>, s: &UnitStatus, f: &Filters) -> String {
    let hidden = if shown(f, tenant, s) { "" } else { " hidden" };
    let name = match id {
        Some(id) => format!(
            "<a href=\"/unit?{}\">{}</a>",
            esc(&unit_query(id)),
            esc(&id.app)
        ),
        None => "<i>onboarding</i>".into(),
    };
    let mut out = format!(
        "<tbody class=\"unit\" data-unit=\"{unit}\" data-tenant=\"{tenant}\" data-result=\"{result}\" data-text=\"{text}\"{hidden}>\
         <tr><td data-label=\"Unit\">{name}</td><td data-label=\"Source\" class=\"source\">{source}</td>\
         <td data-label=\"Revision\">{revision}</td><td data-label=\"Result\">{badge}</td>\
         <td data-label=\"Objects\">{objects}</td><td data-label=\"Last run\">{last}</td>\
         <td data-label=\"Next run\">{next}</td></tr>",
        unit = esc(&s.unit),
        tenant = esc(tenant.unwrap_or("")),
        result = esc(&s.result),
        text = esc(&search_text(s)),
        source = esc(s.source.as_deref().unwrap_or("tenant's onboarding")),
        revision = revision(s.revision.as_deref()),
        badge = badge(&s.result),
        objects = objects(s),
        last = time(s.last_run.as_deref()),
        next = time(s.next_run.as_deref()),
    );
    if let Some(e) = &s.last_error {
        let _ = write!(
            out,
            "<tr class=\"error\"><td colspan=\"7\"><pre>{}</pre></td></tr>",
            esc(e)
        );
    }
    out.push_str("</tbody>");
    out
}

/// A unit's page: the sync panel, the live part, and its comparison with the cluster (loaded
/// by the script).
pub(super) fn unit(page: &Page, id: &UnitId, live: &str) -> String {
    let query = esc(&unit_query(id));
    let content = format!(
        "<main><p><a href=\"/\">← all units</a></p>\
         <h1>{name} {button}</h1>{panel}<div id=\"live\">{live}</div>\
         <section class=\"panel\" id=\"inspect\" data-src=\"/unit/inspect?{query}\">\
         <h2>Objects and diff <button type=\"button\" id=\"inspect-again\">Compare again</button></h2>\
         <div id=\"inspection\"><p class=\"note\">Comparing with the cluster… \
         (<a href=\"/unit/inspect?{query}\">without the script</a>)</p></div></section></main>",
        name = esc(&unit_name(id)),
        button = sync_button("Sync now", id.tenant.as_deref(), Some(&id.app)),
        panel = SYNC_PANEL,
    );
    shell(page, "unit", &content)
}

/// A unit page's live part: its status and its recent syncs.
pub(super) fn unit_live(snapshot: &Snapshot, id: &UnitId) -> String {
    let units = statuses(snapshot);
    let Some(s) = units.get(id) else {
        return "<p class=\"note\">This unit is no longer placed on this cluster.</p>".into();
    };
    let mut out = String::from("<section class=\"panel\"><dl class=\"summary\">");
    let mut item = |k: &str, v: String| {
        let _ = write!(out, "<dt>{k}</dt><dd>{v}</dd>");
    };
    item("Result", badge(&s.result));
    item(
        "Tenant",
        esc(id.tenant.as_deref().unwrap_or("– (cluster infra)")),
    );
    item("Source", esc(s.source.as_deref().unwrap_or("")));
    item("Revision", revision(s.revision.as_deref()));
    if let Some(signer) = &s.signer {
        item("Signed by", esc(signer));
    }
    item("Last sync", objects(s));
    item("Last run", time(s.last_run.as_deref()));
    item("Next run", time(s.next_run.as_deref()));
    if let Some(d) = s.duration_seconds {
        item("Took", format!("{d:.2} s"));
    }
    out.push_str("</dl>");
    if let Some(e) = &s.last_error {
        let _ = write!(
            out,
            "<div class=\"alert\"><b>Last error</b><pre>{}</pre></div>",
            esc(e)
        );
    }
    out.push_str("</section><section class=\"panel\"><h2>Recent syncs</h2>");
    match snapshot.status.history.get(id) {
        Some(history) if !history.is_empty() => {
            out.push_str(
                "<table class=\"history\"><thead><tr><th>Time</th><th>Revision</th><th>Result</th>\
                 <th>Changes</th><th>Took</th></tr></thead><tbody>",
            );
            for r in history.iter() {
                out.push_str(&history_row(r));
            }
            out.push_str("</tbody></table>");
        }
        _ => out.push_str("<p class=\"note\">Not synced since the agent started.</p>"),
    }
    out.push_str("</section>");
    out
}

fn history_row(r: &SyncRecord) -> String {
    let mut changes = String::new();
    if r.changes.is_empty() && r.failed == 0 && r.error.is_none() {
        changes.push_str("<span class=\"none\">nothing changed</span>");
    }
    if !r.changes.is_empty() {
        changes.push_str("<ul>");
        for c in &r.changes {
            let _ = write!(changes, "<li>{}</li>", esc(c));
        }
        if r.more > 0 {
            let _ = write!(changes, "<li>and {} more</li>", r.more);
        }
        changes.push_str("</ul>");
    }
    if let Some(e) = &r.error {
        let _ = write!(changes, "<pre class=\"bad\">{}</pre>", esc(e));
    }
    let runs = if r.runs > 1 {
        format!(
            " <span class=\"runs\" title=\"syncs alike in a row\">×{}</span>",
            r.runs
        )
    } else {
        String::new()
    };
    format!(
        "<tr><td data-label=\"Time\">{}{runs}</td><td data-label=\"Revision\">{}</td>\
         <td data-label=\"Result\">{}</td><td data-label=\"Changes\">{changes}</td>\
         <td data-label=\"Took\">{:.2} s</td></tr>",
        time(Some(&r.time)),
        revision(r.revision.as_deref()),
        badge(&r.result),
        r.duration_seconds
    )
}

/// A unit compared with the cluster: its objects, and the diff a sync would apply.
pub(super) fn inspection(i: &Inspection) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<p class=\"note\">Rendered at {} and compared with the cluster just now: {}.</p>",
        revision(i.revision.as_deref()),
        match i.changes {
            0 => "nothing would change".to_string(),
            1 => "1 object would change".to_string(),
            n => format!("{n} objects would change"),
        }
    );
    for e in &i.errors {
        let _ = write!(out, "<div class=\"alert\"><pre>{}</pre></div>", esc(e));
    }
    if !i.notes.is_empty() {
        out.push_str("<ul class=\"notes\">");
        for n in &i.notes {
            let _ = write!(out, "<li>{}</li>", esc(n));
        }
        out.push_str("</ul>");
    }
    out.push_str(
        "<table class=\"objects\"><thead><tr><th>Kind</th><th>Namespace</th><th>Name</th>\
         <th>Health</th><th>State</th></tr></thead><tbody>",
    );
    for o in &i.objects {
        let state_class = o.state.replace(' ', "-");
        let health = match &o.health {
            Some(h) => {
                let class = h.split(':').next().unwrap_or("");
                format!("<span class=\"h-{}\">{}</span>", esc(class), esc(h))
            }
            None => "<span class=\"none\">–</span>".into(),
        };
        let detail = o
            .detail
            .as_deref()
            .map(|d| format!("<div class=\"detail\">{}</div>", esc(d)))
            .unwrap_or_default();
        let _ = write!(
            out,
            "<tr class=\"object\" data-state=\"{state_class}\"><td data-label=\"Kind\">{}</td>\
             <td data-label=\"Namespace\">{}</td><td data-label=\"Name\">{}</td>\
             <td data-label=\"Health\">{health}</td>\
             <td data-label=\"State\"><span class=\"state s-{state_class}\">{}</span>{detail}</td></tr>",
            esc(&o.kind),
            esc(o.namespace.as_deref().unwrap_or("–")),
            esc(&o.name),
            esc(o.state),
        );
    }
    out.push_str("</tbody></table>");
    if i.diff.is_empty() {
        out.push_str("<p class=\"note\">No diff: the cluster matches the render.</p>");
    } else {
        out.push_str("<h3>Diff</h3><pre class=\"diff\">");
        for line in i.diff.lines() {
            let class = match line.as_bytes().first() {
                Some(b'+') if !line.starts_with("+++") => "add",
                Some(b'-') if !line.starts_with("---") => "del",
                Some(b'@') => "hunk",
                _ => "ctx",
            };
            let _ = writeln!(out, "<span class=\"{class}\">{}</span>", esc(line));
        }
        out.push_str("</pre>");
    }
    out
}

pub(super) fn inspection_failed(why: &str) -> String {
    format!(
        "<div class=\"alert\"><b>Could not compare with the cluster</b><pre>{}</pre></div>",
        esc(why)
    )
}

/// The login form, for a browser without a valid session.
pub(super) fn login(why: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>flotilla · log in</title><link rel=\"stylesheet\" href=\"/ui/page.css\">\
         <script src=\"/ui/page.js\" defer></script></head>\
         <body data-page=\"login\"><header><span class=\"brand\">flotilla</span></header><main>\
         <form class=\"panel login\" method=\"post\" action=\"/ui/login\">\
         <h1>Log in</h1><p class=\"note\">{}</p>\
         <label>API token (the contents of <code>listen.token_file</code>)\
         <input type=\"password\" name=\"token\" id=\"token\" autocomplete=\"current-password\" required autofocus></label>\
         <input type=\"hidden\" name=\"next\" id=\"next\" value=\"/\">\
         <button type=\"submit\">Log in</button></form></main></body></html>\n",
        esc(why)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped_for_html_and_attributes() {
        assert_eq!(
            esc("<script>\"a\" & 'b'</script>"),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn units_are_named_by_query() {
        assert_eq!(unit_query(&UnitId::app("ai", "a b")), "tenant=ai&app=a+b");
        assert_eq!(unit_query(&UnitId::infra_named("infra/x")), "app=infra%2Fx");
    }
}
