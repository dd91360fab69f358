//! The objects, their resource versions and the history of changes (for paged lists and
//! watches), and every write path: create, update, patch (apply, merge, strategic), delete, with
//! field ownership, validation, immutable fields, the RBAC escalation check and the side effects
//! of a few kinds (namespaces, CRDs, aggregated ClusterRoles).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::checks;
use super::errors::ApiError;
use super::fields::{self, Entry, Part};
use super::rbac::{self, Policy, Rule, User};
use super::resources::{self, Resource};

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub name: String,
}

pub struct Event {
    pub rv: u64,
    pub key: Key,
    pub old: Option<Value>,
    pub new: Option<Value>,
}

/// How a write is made.
pub struct Write<'a> {
    pub user: &'a User,
    pub manager: String,
    pub dry_run: bool,
    pub force: bool,
    pub subresource: &'a str,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Apply,
    Merge,
    Strategic,
}

pub struct Store {
    pub rv: u64,
    uid: u64,
    pub resources: Vec<Resource>,
    pub objects: BTreeMap<Key, Value>,
    pub events: Vec<Event>,
}

const SYSTEM_NAMESPACES: &[&str] = &["default", "kube-system", "kube-public", "kube-node-lease"];
const CONTROLLER: &str = "kube-controller-manager";

impl Store {
    pub fn new() -> Store {
        let mut store = Store {
            rv: 100,
            uid: 0,
            resources: resources::builtin(),
            objects: BTreeMap::new(),
            events: Vec::new(),
        };
        let system = User::new("system:apiserver", &["system:masters"]);
        for ns in SYSTEM_NAMESPACES {
            store
                .create_internal(
                    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                    &system,
                )
                .expect("system namespaces are valid");
        }
        for obj in rbac::bootstrap() {
            store
                .create_internal(obj, &system)
                .expect("bootstrap policy is valid");
        }
        store
    }

    fn create_internal(&mut self, obj: Value, user: &User) -> Result<Value, ApiError> {
        let (group, version) = split_api_version(obj["apiVersion"].as_str().unwrap_or_default());
        let kind = obj["kind"].as_str().unwrap_or_default();
        let res = self
            .resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.kind == kind)
            .cloned()
            .expect("a built-in kind");
        let ns = obj["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let w = Write {
            user,
            manager: CONTROLLER.into(),
            dry_run: false,
            force: false,
            subresource: "",
        };
        self.create(&res, &ns, obj, &w)
    }

    pub fn resource(&self, group: &str, version: &str, plural: &str) -> Option<Resource> {
        self.resources
            .iter()
            .find(|r| r.group == group && r.version == version && r.plural == plural)
            .cloned()
    }

    fn key(res: &Resource, namespace: &str, name: &str) -> Key {
        Key {
            group: res.group.clone(),
            plural: res.plural.clone(),
            namespace: if res.namespaced {
                namespace.into()
            } else {
                String::new()
            },
            name: name.into(),
        }
    }

    /// The stored object as `res`'s version presents it.
    fn present(res: &Resource, obj: &Value) -> Value {
        let mut obj = obj.clone();
        obj["apiVersion"] = json!(res.api_version());
        obj
    }

    pub fn get(&self, res: &Resource, namespace: &str, name: &str) -> Result<Value, ApiError> {
        self.objects
            .get(&Self::key(res, namespace, name))
            .map(|o| Self::present(res, o))
            .ok_or_else(|| ApiError::not_found(res, name))
    }

    /// The objects of `res` (in `namespace`, or all) as they were at resource version `rv`.
    /// The stored objects of one resource, in key order: a range of the map, not a scan, since
    /// every request reads the RBAC objects this way.
    pub fn of<'a>(
        &'a self,
        group: &str,
        plural: &str,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> {
        let start = Key {
            group: group.into(),
            plural: plural.into(),
            namespace: String::new(),
            name: String::new(),
        };
        let (group, plural) = (start.group.clone(), start.plural.clone());
        self.objects
            .range(start..)
            .take_while(move |(k, _)| k.group == group && k.plural == plural)
    }

    pub fn snapshot(&self, res: &Resource, namespace: &str, rv: u64) -> BTreeMap<Key, Value> {
        let in_scope = |k: &Key| {
            k.group == res.group
                && k.plural == res.plural
                && (namespace.is_empty() || k.namespace == namespace)
        };
        let mut out: BTreeMap<Key, Value> = self
            .of(&res.group, &res.plural)
            .filter(|(k, _)| in_scope(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for e in self.events.iter().rev().take_while(|e| e.rv > rv) {
            if in_scope(&e.key) {
                match &e.old {
                    Some(old) => out.insert(e.key.clone(), old.clone()),
                    None => out.remove(&e.key),
                };
            }
        }
        out
    }

    fn next_uid(&mut self) -> String {
        use sha2::Digest as _;
        self.uid += 1;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let h = sha2::Sha256::digest(format!("{nanos}/{}/{:p}", self.uid, self));
        let hex: String = h.iter().take(16).map(|b| format!("{b:02x}")).collect();
        format!(
            "{}-{}-4{}-a{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            &hex[17..20],
            &hex[20..32]
        )
    }

    /// Whether `name` of `res` may be created in namespace `ns`: it exists and is not being
    /// deleted (NamespaceLifecycle admission, with its `NamespaceTerminating` cause).
    pub fn namespace_exists(&self, res: &Resource, ns: &str, name: &str) -> Result<(), ApiError> {
        let key = Key {
            group: String::new(),
            plural: "namespaces".into(),
            namespace: String::new(),
            name: ns.into(),
        };
        match self.objects.get(&key) {
            None => Err(ApiError::namespace_not_found(ns)),
            Some(n) if n["metadata"]["deletionTimestamp"].is_string() => {
                Err(ApiError::namespace_terminating(res, ns, name))
            }
            Some(_) => Ok(()),
        }
    }

    /// Fills `apiVersion`, `kind`, name and namespace, and refuses a body that names another kind,
    /// name or namespace than the request.
    fn normalize(
        res: &Resource,
        namespace: &str,
        name: Option<&str>,
        body: &mut Value,
    ) -> Result<(), ApiError> {
        if !body.is_object() {
            return Err(ApiError::bad_request(
                "the body of the request was in an unknown format - accepted media types include: application/json, application/yaml",
            ));
        }
        let kind = body["kind"].as_str().unwrap_or(&res.kind).to_string();
        let api_version = body["apiVersion"].as_str().unwrap_or_default().to_string();
        if kind != res.kind || (!api_version.is_empty() && api_version != res.api_version()) {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({api_version}) does not match the expected API version ({}) or the kind ({kind}) is not {}",
                res.api_version(),
                res.kind
            )));
        }
        body["apiVersion"] = json!(res.api_version());
        body["kind"] = json!(res.kind);
        if !body["metadata"].is_object() {
            body["metadata"] = json!({});
        }
        if let Some(name) = name {
            match body["metadata"]["name"].as_str() {
                Some(n) if n != name => {
                    return Err(ApiError::bad_request(format!(
                        "the name of the object ({n}) does not match the name on the URL ({name})"
                    )));
                }
                _ => body["metadata"]["name"] = json!(name),
            }
        }
        if res.namespaced {
            match body["metadata"]["namespace"].as_str() {
                Some(n) if !n.is_empty() && n != namespace => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                _ => body["metadata"]["namespace"] = json!(namespace),
            }
        } else if let Some(meta) = body["metadata"].as_object_mut() {
            meta.remove("namespace");
        }
        Ok(())
    }

    pub fn create(
        &mut self,
        res: &Resource,
        namespace: &str,
        mut body: Value,
        w: &Write,
    ) -> Result<Value, ApiError> {
        Self::normalize(res, namespace, None, &mut body)?;
        if body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .is_empty()
            && let Some(prefix) = body["metadata"]["generateName"].as_str().map(String::from)
        {
            let suffix: String = self
                .next_uid()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .take(5)
                .collect();
            body["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
        }
        let name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if res.namespaced {
            self.namespace_exists(res, namespace, &name)?;
        }
        if self.objects.contains_key(&Self::key(res, namespace, &name)) {
            checks::validate(res, &body)?;
            return Err(ApiError::already_exists(res, &name));
        }
        if res.status
            && let Some(m) = body.as_object_mut()
        {
            m.remove("status");
        }
        let part = Part::Main {
            status_separate: res.status,
        };
        let entries = vec![Entry {
            manager: w.manager.clone(),
            operation: "Update".into(),
            api_version: res.api_version(),
            subresource: String::new(),
            time: now(),
            fields: fields::fields_of(&body, part),
        }];
        self.commit(res, None, body, entries, w)
    }

    pub fn update(
        &mut self,
        res: &Resource,
        namespace: &str,
        name: &str,
        mut body: Value,
        w: &Write,
    ) -> Result<Value, ApiError> {
        Self::normalize(res, namespace, Some(name), &mut body)?;
        let key = Self::key(res, namespace, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        precondition(res, name, &body, &old)?;
        let new = self.compose(res, &old, body, w.subresource);
        let entries = self.update_ownership(res, &old, &new, w);
        self.commit(res, Some(&old), new, entries, w)
    }

    /// The object a write to `subresource` makes of `old` and `body`: the main endpoint keeps the
    /// old status, `/status` keeps everything but the status.
    fn compose(&self, res: &Resource, old: &Value, body: Value, subresource: &str) -> Value {
        if subresource == "status" {
            let mut new = old.clone();
            new["status"] = body["status"].clone();
            if new["status"].is_null() {
                new.as_object_mut().expect("an object").remove("status");
            }
            return new;
        }
        let mut new = body;
        if res.status {
            match old.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    new.as_object_mut().expect("an object").remove("status");
                }
            }
        }
        new
    }

    fn part(res: &Resource, subresource: &str) -> Part {
        if subresource == "status" {
            Part::Status
        } else {
            Part::Main {
                status_separate: res.status,
            }
        }
    }

    /// Ownership after an update (not an apply): the writer owns what it changed; removed fields
    /// leave every owner.
    fn update_ownership(&self, res: &Resource, old: &Value, new: &Value, w: &Write) -> Vec<Entry> {
        let part = Self::part(res, w.subresource);
        let mut entries = fields::read_entries(old);
        let old_fields = fields::fields_of(old, part);
        let new_fields = fields::fields_of(new, part);
        let changed = fields::changed(&new_fields, old, new);
        let removed: fields::Fields = old_fields.difference(&new_fields).cloned().collect();
        for e in entries.iter_mut() {
            e.fields
                .retain(|p| !changed.contains(p) && !removed.contains(p));
        }
        if !changed.is_empty() {
            match entries
                .iter_mut()
                .find(|e| e.same_owner(&w.manager, "Update", w.subresource))
            {
                Some(e) => {
                    e.fields.extend(changed);
                    e.time = now();
                }
                None => entries.push(Entry {
                    manager: w.manager.clone(),
                    operation: "Update".into(),
                    api_version: res.api_version(),
                    subresource: w.subresource.into(),
                    time: now(),
                    fields: changed,
                }),
            }
        }
        entries
    }

    /// PATCH: server-side apply (which may create), JSON merge or strategic merge. Returns the
    /// object and whether it was created.
    pub fn patch(
        &mut self,
        res: &Resource,
        namespace: &str,
        name: &str,
        kind: PatchType,
        body: Value,
        w: &Write,
    ) -> Result<(Value, bool), ApiError> {
        let key = Self::key(res, namespace, name);
        let old = self.objects.get(&key).cloned();
        if kind != PatchType::Apply {
            let Some(old) = old else {
                return Err(ApiError::not_found(res, name));
            };
            if !body.is_object() {
                return Err(ApiError::bad_request(
                    "the body of the request was in an unknown format",
                ));
            }
            let mut patched = fields::merge_patch(&old, &body, kind == PatchType::Strategic, None);
            Self::normalize(res, namespace, Some(name), &mut patched)?;
            precondition(res, name, &body, &old)?;
            let new = self.compose(res, &old, patched, w.subresource);
            let entries = self.update_ownership(res, &old, &new, w);
            return Ok((self.commit(res, Some(&old), new, entries, w)?, false));
        }

        let mut applied = body;
        if applied["kind"].as_str().is_none_or(str::is_empty) {
            return Err(ApiError::bad_request(
                "Object 'Kind' is missing in the apply patch",
            ));
        }
        Self::normalize(res, namespace, Some(name), &mut applied)?;
        if w.manager.is_empty() {
            return Err(ApiError::new(
                422,
                "Invalid",
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        if let Some(meta) = applied["metadata"].as_object_mut() {
            if meta
                .get("managedFields")
                .is_some_and(|m| m.as_array().is_some_and(|a| !a.is_empty()))
            {
                return Err(ApiError::bad_request("metadata.managedFields must be nil"));
            }
            meta.remove("managedFields");
        }
        let part = Self::part(res, w.subresource);
        let applied = match part {
            Part::Status => {
                json!({"apiVersion": applied["apiVersion"], "kind": applied["kind"], "metadata": applied["metadata"], "status": applied["status"]})
            }
            Part::Main {
                status_separate: true,
            } => {
                let mut a = applied;
                a.as_object_mut().expect("an object").remove("status");
                a
            }
            Part::Main { .. } => applied,
        };
        let applied_fields = fields::fields_of(&applied, part);
        let me = Entry {
            manager: w.manager.clone(),
            operation: "Apply".into(),
            api_version: res.api_version(),
            subresource: w.subresource.into(),
            time: now(),
            fields: applied_fields.clone(),
        };
        let Some(old) = old else {
            if w.subresource == "status" {
                return Err(ApiError::not_found(res, name));
            }
            if res.namespaced {
                self.namespace_exists(res, namespace, name)?;
            }
            return Ok((self.commit(res, None, applied, vec![me], w)?, true));
        };

        precondition(res, name, &applied, &old)?;
        let mut entries = fields::read_entries(&old);
        let clashes = fields::conflicts(
            &entries,
            (&w.manager, w.subresource),
            &old,
            &applied,
            &applied_fields,
        );
        if !clashes.is_empty() {
            if !w.force {
                return Err(conflict_error(res, name, &entries, &clashes));
            }
            for (i, paths) in &clashes {
                for p in paths {
                    entries[*i].fields.remove(p);
                }
            }
        }
        let previous = entries
            .iter()
            .find(|e| e.same_owner(&w.manager, "Apply", w.subresource))
            .map(|e| e.fields.clone())
            .unwrap_or_default();
        let mut merged = fields::merge(&old, &applied, None);
        for path in previous.difference(&applied_fields) {
            let shared = entries.iter().any(|e| {
                !e.same_owner(&w.manager, "Apply", w.subresource) && e.fields.contains(path)
            });
            if !shared {
                fields::remove(&mut merged, path);
            }
        }
        match entries
            .iter_mut()
            .find(|e| e.same_owner(&w.manager, "Apply", w.subresource))
        {
            Some(e) => {
                if e.fields != applied_fields {
                    *e = me;
                }
            }
            None => entries.push(me),
        }
        fields::forget_missing(&mut entries, &merged);
        let new = self.compose(res, &old, merged, "");
        Ok((self.commit(res, Some(&old), new, entries, w)?, false))
    }

    /// Validates and stores `new` (unless a dry run or a no-op), filling the server's metadata.
    fn commit(
        &mut self,
        res: &Resource,
        old: Option<&Value>,
        mut new: Value,
        entries: Vec<Entry>,
        w: &Write,
    ) -> Result<Value, ApiError> {
        checks::decode(res, &new)?;
        checks::fold_string_data(res, &mut new);
        if res.custom
            && let Some(schema) = self.crd_schema(res)
        {
            checks::prune(&mut new, &schema, true);
        }
        checks::validate(res, &new)?;
        let name = new["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if let Some(old) = old {
            let causes = checks::immutable(res, old, &new);
            if !causes.is_empty() {
                return Err(ApiError::invalid(res, &name, &causes));
            }
            for k in [
                "uid",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "resourceVersion",
            ] {
                match old["metadata"].get(k) {
                    Some(v) => new["metadata"][k] = v.clone(),
                    None => {
                        new["metadata"].as_object_mut().expect("metadata").remove(k);
                    }
                }
            }
        } else {
            let meta = new["metadata"].as_object_mut().expect("metadata");
            for k in [
                "uid",
                "resourceVersion",
                "creationTimestamp",
                "generation",
                "deletionTimestamp",
                "managedFields",
                "selfLink",
            ] {
                meta.remove(k);
            }
        }
        if res.group == "apiextensions.k8s.io" {
            self.crd_admit(res, &mut new)?;
        }
        if res.group == "rbac.authorization.k8s.io" {
            self.escalation_check(res, &new, w.user)?;
        }
        if res.group.is_empty() && res.plural == "namespaces" && w.subresource.is_empty() {
            new["spec"]["finalizers"] = json!(["kubernetes"]);
            new["status"] = json!({"phase": "Active"});
            let labels = new["metadata"]
                .as_object_mut()
                .expect("metadata")
                .entry("labels")
                .or_insert_with(|| json!({}));
            labels["kubernetes.io/metadata.name"] = json!(name);
        }
        if res.generation {
            // What counts as a change of the desired state: everything but metadata and a
            // separate status; a Deployment's annotations count too, as its strategy says.
            let annotations_count = res.group == "apps" && res.plural == "deployments";
            let spec_of = |v: &Value| {
                let mut v = v.clone();
                let annotations = v["metadata"]["annotations"].clone();
                let m = v.as_object_mut().expect("an object");
                m.remove("metadata");
                if res.status {
                    m.remove("status");
                }
                if annotations_count {
                    m.insert("annotations".into(), annotations);
                }
                v
            };
            let generation = match old {
                None => 1,
                Some(old) => {
                    let g = old["metadata"]["generation"].as_u64().unwrap_or(1);
                    if spec_of(old) != spec_of(&new) {
                        g + 1
                    } else {
                        g
                    }
                }
            };
            new["metadata"]["generation"] = json!(generation);
        }
        let mut entries = entries;
        fields::forget_missing(&mut entries, &new);
        fields::write_entries(&mut new, &entries);
        if let Some(old) = old
            && same_ignoring_times(old, &new)
        {
            return Ok(Self::present(res, old));
        }
        let key = Self::key(
            res,
            new["metadata"]["namespace"].as_str().unwrap_or_default(),
            &name,
        );
        if old.is_none() {
            new["metadata"]["uid"] = json!(self.next_uid());
            new["metadata"]["creationTimestamp"] = json!(now());
        }
        if w.dry_run {
            return Ok(Self::present(res, &new));
        }
        if old.is_some_and(|o| o["metadata"]["deletionTimestamp"].is_string())
            && new["metadata"]["finalizers"]
                .as_array()
                .is_none_or(Vec::is_empty)
        {
            self.remove(res, key, old.cloned().expect("an old object"));
            return Ok(Self::present(res, &new));
        }
        let new = self.replace(key, old.cloned(), new);
        self.after_write(res, old.is_none(), &new);
        Ok(Self::present(res, &new))
    }

    /// Side effects of a stored write, as the real controllers would make them.
    fn after_write(&mut self, res: &Resource, created: bool, obj: &Value) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if res.group.is_empty() && res.plural == "namespaces" && created {
            let system = User::new("system:kube-controller-manager", &["system:masters"]);
            let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}});
            let ca = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": name},
                "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\n(test API server)\n-----END CERTIFICATE-----\n"}});
            let _ = self.create_internal(sa, &system);
            let _ = self.create_internal(ca, &system);
        }
        if res.group == "apiextensions.k8s.io" {
            self.refresh_crds();
        }
        if res.group == "rbac.authorization.k8s.io" && res.plural == "clusterroles" {
            self.aggregate();
        }
    }

    pub fn delete(
        &mut self,
        res: &Resource,
        namespace: &str,
        name: &str,
        w: &Write,
        options: &Value,
    ) -> Result<Value, ApiError> {
        let preconditions = &options["preconditions"];
        let key = Self::key(res, namespace, name);
        let Some(old) = self.objects.get(&key).cloned() else {
            return Err(ApiError::not_found(res, name));
        };
        for (field, what) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            if let Some(want) = preconditions[field].as_str()
                && old["metadata"][field] != want
            {
                return Err(ApiError::conflict(
                    res,
                    name,
                    &format!(
                        "Precondition failed: {what} in precondition: {want}, {what} in object meta: {}",
                        old["metadata"][field].as_str().unwrap_or_default()
                    ),
                ));
            }
        }
        let finalizers = old["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        let namespace_like = res.group.is_empty() && res.plural == "namespaces";
        // Held by finalizers: marked for deletion and kept until they are removed. A namespace
        // also turns Terminating (refusing new content) once the namespace controller has
        // deleted what was in it.
        if finalizers && !(namespace_like && w.dry_run) {
            if w.dry_run || old["metadata"]["deletionTimestamp"].is_string() {
                return Ok(Self::present(res, &old));
            }
            let mut new = old.clone();
            new["metadata"]["deletionTimestamp"] = json!(now());
            new["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if namespace_like {
                new["status"]["phase"] = json!("Terminating");
            }
            let new = self.replace(key.clone(), Some(old), new);
            if namespace_like {
                self.remove_contents(&key.name);
            }
            return Ok(Self::present(res, &new));
        }
        // A namespace, and a Foreground deletion, answer with the object being deleted, as the
        // real server does; here the namespace controller and the garbage collector finish at
        // once, so the object is gone right after.
        let foreground = options["propagationPolicy"] == "Foreground";
        if namespace_like || foreground {
            let mut shown = old.clone();
            shown["metadata"]["deletionTimestamp"] = json!(now());
            shown["metadata"]["deletionGracePeriodSeconds"] = json!(0);
            if namespace_like {
                shown["status"]["phase"] = json!("Terminating");
            }
            if foreground {
                let mut list = old["metadata"]["finalizers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                list.push(json!("foregroundDeletion"));
                shown["metadata"]["finalizers"] = json!(list);
            }
            if !w.dry_run {
                self.remove(res, key, old);
            }
            return Ok(Self::present(res, &shown));
        }
        let status = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "group": res.group, "kind": res.plural, "uid": old["metadata"]["uid"]},
        });
        if w.dry_run {
            return Ok(status);
        }
        self.remove(res, key, old);
        Ok(status)
    }

    /// Removes an object for good, with what depends on it: a namespace's contents, a CRD's
    /// custom resources.
    fn remove(&mut self, res: &Resource, key: Key, old: Value) {
        self.objects.remove(&key);
        self.rv += 1;
        let mut gone = old.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.events.push(Event {
            rv: self.rv,
            key: key.clone(),
            old: Some(gone),
            new: None,
        });
        let contents: Vec<Key> = if res.group.is_empty() && res.plural == "namespaces" {
            self.remove_contents(&key.name);
            Vec::new()
        } else if res.group == "apiextensions.k8s.io" {
            let group = old["spec"]["group"].as_str().unwrap_or_default();
            let plural = old["spec"]["names"]["plural"].as_str().unwrap_or_default();
            self.of(group, plural).map(|(k, _)| k.clone()).collect()
        } else {
            Vec::new()
        };
        self.remove_all(contents);
        if res.group == "apiextensions.k8s.io" {
            self.refresh_crds();
        }
        if res.group == "rbac.authorization.k8s.io" && res.plural == "clusterroles" {
            self.aggregate();
        }
    }

    /// Stores `new` at `key` (in place of `old`, if there was one) with the next resourceVersion,
    /// recording the change for watches; returns what was stored.
    fn replace(&mut self, key: Key, old: Option<Value>, mut new: Value) -> Value {
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key.clone(), new.clone());
        self.events.push(Event {
            rv: self.rv,
            key,
            old,
            new: Some(new.clone()),
        });
        new
    }

    /// What the namespace controller deletes: everything in namespace `ns`.
    fn remove_contents(&mut self, ns: &str) {
        let contents: Vec<Key> = self
            .objects
            .keys()
            .filter(|k| k.namespace == ns)
            .cloned()
            .collect();
        self.remove_all(contents);
    }

    fn remove_all(&mut self, keys: Vec<Key>) {
        for k in keys {
            if let Some(obj) = self.objects.remove(&k) {
                self.rv += 1;
                let mut gone = obj;
                gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
                self.events.push(Event {
                    rv: self.rv,
                    key: k,
                    old: Some(gone),
                    new: None,
                });
            }
        }
    }

    // --- CustomResourceDefinitions -------------------------------------------------------

    fn crd_admit(&self, res: &Resource, crd: &mut Value) -> Result<(), ApiError> {
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let served =
            resources::from_crd(crd).map_err(|causes| ApiError::invalid(res, &name, &causes))?;
        if let Some(first) = served.first() {
            let taken = self
                .resources
                .iter()
                .any(|r| !r.custom && r.group == first.group && r.plural == first.plural);
            if taken {
                return Err(ApiError::invalid(
                    res,
                    &name,
                    &[(
                        "spec.group".into(),
                        format!("Invalid value: {:?}: is a built-in group", first.group),
                    )],
                ));
            }
        }
        let storage: Vec<Value> = crd["spec"]["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|v| v["storage"] == json!(true))
            .map(|v| v["name"].clone())
            .collect();
        let settled = crd["status"]["acceptedNames"] == crd["spec"]["names"]
            && crd["status"]["storedVersions"] == json!(storage)
            && crd["status"]["conditions"].is_array();
        if settled {
            return Ok(());
        }
        let now = now();
        crd["status"] = json!({
            "acceptedNames": crd["spec"]["names"],
            "storedVersions": storage,
            "conditions": [
                {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
            ],
        });
        Ok(())
    }

    fn refresh_crds(&mut self) {
        self.resources.retain(|r| !r.custom);
        let crds: Vec<Value> = self
            .of("apiextensions.k8s.io", "customresourcedefinitions")
            .map(|(_, v)| v.clone())
            .collect();
        for crd in crds {
            if let Ok(served) = resources::from_crd(&crd) {
                self.resources.extend(served);
            }
        }
    }

    fn crd_schema(&self, res: &Resource) -> Option<Value> {
        let key = Key {
            group: "apiextensions.k8s.io".into(),
            plural: "customresourcedefinitions".into(),
            namespace: String::new(),
            name: format!("{}.{}", res.plural, res.group),
        };
        resources::crd_schema(self.objects.get(&key)?, &res.version)
    }

    // --- RBAC ----------------------------------------------------------------------------

    pub fn policy(&self) -> Policy<'_> {
        let of = |plural: &str| -> Vec<&Value> {
            self.of("rbac.authorization.k8s.io", plural)
                .map(|(_, v)| v)
                .collect()
        };
        Policy {
            roles: of("roles"),
            cluster_roles: of("clusterroles"),
            role_bindings: of("rolebindings"),
            cluster_role_bindings: of("clusterrolebindings"),
        }
    }

    /// Refuses a role or binding that grants more than `user` holds, unless `user` may
    /// `escalate` (roles) or `bind` (bindings).
    fn escalation_check(&self, res: &Resource, obj: &Value, user: &User) -> Result<(), ApiError> {
        let policy = self.policy();
        let name = obj["metadata"]["name"].as_str().unwrap_or_default();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default();
        let may = |verb: &str, resource: &str, resource_name: &str| {
            policy.allows(
                user,
                &rbac::Attributes {
                    verb: verb.into(),
                    group: "rbac.authorization.k8s.io".into(),
                    resource: resource.into(),
                    namespace: ns.into(),
                    name: resource_name.into(),
                    path: String::new(),
                },
            )
        };
        let rules_of = |v: &Value| -> Vec<Rule> {
            v["rules"]
                .as_array()
                .map(|r| r.iter().map(Rule::from_json).collect())
                .unwrap_or_default()
        };
        let requested = match res.plural.as_str() {
            "roles" | "clusterroles" => {
                if may("escalate", &res.plural, name) {
                    return Ok(());
                }
                if obj["aggregationRule"].is_object() {
                    let all = Rule {
                        verbs: vec!["*".into()],
                        groups: vec!["*".into()],
                        resources: vec!["*".into()],
                        ..Rule::default()
                    };
                    if !policy.not_held(user, "", &[all]).is_empty() {
                        return Err(ApiError::forbidden(
                            &res.group,
                            &res.plural,
                            name,
                            format!(
                                "{} {name:?} is forbidden: user {:?} (groups={:?}) is attempting to grant RBAC permissions not currently held:\nmust have cluster-admin privileges to use the aggregationRule",
                                res.qualified(),
                                user.name,
                                user.groups
                            ),
                        ));
                    }
                    return Ok(());
                }
                rules_of(obj)
            }
            "rolebindings" | "clusterrolebindings" => {
                let role_ref = &obj["roleRef"];
                let role_name = role_ref["name"].as_str().unwrap_or_default();
                let role_resource = if role_ref["kind"] == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", role_resource, role_name) {
                    return Ok(());
                }
                let role_key = Key {
                    group: "rbac.authorization.k8s.io".into(),
                    plural: role_resource.into(),
                    namespace: if role_resource == "roles" {
                        ns.into()
                    } else {
                        String::new()
                    },
                    name: role_name.into(),
                };
                match self.objects.get(&role_key) {
                    Some(role) => rules_of(role),
                    // The real server looks the role up to compare its rules and answers the
                    // binding's write with 404 NotFound when it is not there yet (seen on 1.36:
                    // `rolebindings.rbac.authorization.k8s.io "scanner" not found`): a binding
                    // must be written after its role by a caller that may not `bind`.
                    None => return Err(ApiError::not_found(res, name)),
                }
            }
            _ => return Ok(()),
        };
        let missing = policy.not_held(user, ns, &requested);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(ApiError::forbidden(
                &res.group,
                &res.plural,
                name,
                rbac::escalation_message(&res.qualified(), name, user, &missing),
            ))
        }
    }

    /// Fills the rules of ClusterRoles with an `aggregationRule`, as the aggregation controller
    /// does, until nothing changes.
    fn aggregate(&mut self) {
        for _ in 0..4 {
            let roles: Vec<(Key, Value)> = self
                .of("rbac.authorization.k8s.io", "clusterroles")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let mut changed = false;
            for (key, role) in &roles {
                if !role["aggregationRule"].is_object() {
                    continue;
                }
                let mut rules: Vec<Value> = Vec::new();
                for (other_key, other) in &roles {
                    if other_key != key
                        && rbac::selected(&role["aggregationRule"], &other["metadata"]["labels"])
                    {
                        for rule in other["rules"].as_array().into_iter().flatten() {
                            if !rules.contains(rule) {
                                rules.push(rule.clone());
                            }
                        }
                    }
                }
                if role["rules"] != json!(rules) {
                    let mut new = role.clone();
                    new["rules"] = json!(rules);
                    self.replace(key.clone(), Some(role.clone()), new);
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
    }
}

fn conflict_error(
    res: &Resource,
    name: &str,
    entries: &[Entry],
    clashes: &[(usize, Vec<fields::Path>)],
) -> ApiError {
    // How the real server prints a manager: appliers by name, updaters with their apiVersion.
    let manager = |e: &Entry| {
        let mut m = format!("{:?}", e.manager);
        if !e.subresource.is_empty() {
            m = format!("{m} with subresource {:?}", e.subresource);
        }
        if e.operation == "Update" {
            m = format!("{m} using {}", e.api_version);
        }
        m
    };
    let mut by_manager: Vec<(String, Vec<String>)> = Vec::new();
    let mut causes = Vec::new();
    for (i, paths) in clashes {
        let who = manager(&entries[*i]);
        let shown: Vec<String> = paths.iter().map(|p| fields::display(p)).collect();
        for field in &shown {
            causes.push(json!({"reason": "FieldManagerConflict", "message": format!("conflict with {who}"), "field": field}));
        }
        by_manager.push((who, shown));
    }
    let count = causes.len();
    let message = if count == 1 {
        let (who, paths) = &by_manager[0];
        format!(
            "Apply failed with 1 conflict: conflict with {who}: {}",
            paths[0]
        )
    } else {
        by_manager.sort();
        let mut lines = Vec::new();
        for (who, paths) in &by_manager {
            lines.push(format!("conflicts with {who}:"));
            lines.extend(paths.iter().map(|p| format!("- {p}")));
        }
        format!("Apply failed with {count} conflicts: {}", lines.join("\n"))
    };
    let mut details = json!({"name": name, "kind": res.plural, "causes": causes});
    if !res.group.is_empty() {
        details["group"] = json!(res.group);
    }
    ApiError::new(409, "Conflict", message).with_details(details)
}

/// Optimistic concurrency: a body that names a resourceVersion must name the current one.
fn precondition(res: &Resource, name: &str, body: &Value, old: &Value) -> Result<(), ApiError> {
    match body["metadata"]["resourceVersion"].as_str() {
        Some(rv) if !rv.is_empty() && rv != old["metadata"]["resourceVersion"] => {
            Err(ApiError::conflict(
                res,
                name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ))
        }
        _ => Ok(()),
    }
}

fn same_ignoring_times(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(list) = v["metadata"]["managedFields"].as_array_mut() {
            for e in list {
                e.as_object_mut().expect("an entry").remove("time");
            }
        }
        v
    };
    strip(old) == strip(new)
}

pub fn split_api_version(api_version: &str) -> (String, String) {
    match api_version.split_once('/') {
        Some((g, v)) => (g.into(), v.into()),
        None => (String::new(), api_version.into()),
    }
}

/// Now, as RFC 3339 in UTC with seconds, as the API server writes times.
pub fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}
