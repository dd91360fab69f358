//! A Kubernetes cluster for the scenarios shared by `tests/` (the test API server) and
//! `integration/` (a real cluster): an admin client, clients for other identities, unique names
//! so that runs never collide on a shared cluster, and cleanup of everything a scenario created,
//! also when it fails.

use std::future::Future;
use std::sync::{Arc, Mutex};

use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

pub struct Cluster {
    pub admin: Client,
    kubeconfig: Kubeconfig,
    suffix: String,
    created: Mutex<Vec<(ApiResource, String)>>,
}

fn cluster_scoped(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.into(),
        version: version.into(),
        api_version: if group.is_empty() {
            version.into()
        } else {
            format!("{group}/{version}")
        },
        kind: kind.into(),
        plural: plural.into(),
    }
}

impl Cluster {
    /// Connects as the kubeconfig's user (an admin).
    pub async fn connect(path: &std::path::Path) -> Cluster {
        let kubeconfig = Kubeconfig::read_from(path).expect("a readable kubeconfig");
        let config =
            Config::from_custom_kubeconfig(kubeconfig.clone(), &KubeConfigOptions::default())
                .await
                .expect("a usable kubeconfig");
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        Cluster {
            admin: Client::try_from(config).expect("a client"),
            kubeconfig,
            suffix: format!(
                "{:x}",
                (nanos ^ (std::process::id() as u128) << 20) % 0xff_ffff
            ),
            created: Mutex::new(Vec::new()),
        }
    }

    async fn config(&self) -> Config {
        Config::from_custom_kubeconfig(self.kubeconfig.clone(), &KubeConfigOptions::default())
            .await
            .expect("a usable kubeconfig")
    }

    /// `base` made unique to this run.
    pub fn name(&self, base: &str) -> String {
        format!("{base}-{}", self.suffix)
    }

    /// A client that impersonates `user` (and `groups`) with the admin's credentials.
    pub async fn impersonating(&self, user: &str, groups: &[&str]) -> Client {
        let mut config = self.config().await;
        config.auth_info.impersonate = Some(user.into());
        if !groups.is_empty() {
            config.auth_info.impersonate_groups =
                Some(groups.iter().map(|g| g.to_string()).collect());
        }
        Client::try_from(config).expect("a client")
    }

    /// The cluster's config with a bearer token as the only credential.
    pub async fn token_config(&self, token: &str) -> Config {
        let mut config = self.config().await;
        config.auth_info = kube::config::AuthInfo {
            token: Some(secrecy::SecretString::from(token.to_string())),
            ..Default::default()
        };
        config
    }

    /// A client that authenticates with a bearer token (and nothing else of the admin's).
    pub async fn with_token(&self, token: &str) -> Client {
        Client::try_from(self.token_config(token).await).expect("a client")
    }

    /// Creates a namespace unique to this run, deleted by `cleanup`.
    pub async fn namespace(&self, base: &str) -> String {
        let name = self.name(base);
        self.create_cluster_object(
            cluster_scoped("", "v1", "Namespace", "namespaces"),
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .await;
        name
    }

    /// Creates a cluster-scoped object, deleted by `cleanup`.
    pub async fn create_cluster_object(
        &self,
        ar: ApiResource,
        body: serde_json::Value,
    ) -> DynamicObject {
        let api: Api<DynamicObject> = Api::all_with(self.admin.clone(), &ar);
        let obj: DynamicObject = serde_json::from_value(body).expect("a valid object");
        let name = obj.metadata.name.clone().expect("a name");
        self.created.lock().unwrap().push((ar, name));
        api.create(&PostParams::default(), &obj)
            .await
            .expect("the admin creates a cluster-scoped object")
    }

    /// Records a cluster-scoped object created by other means, for `cleanup`.
    pub fn track(&self, ar: ApiResource, name: &str) {
        self.created.lock().unwrap().push((ar, name.into()));
    }

    /// A ServiceAccount in `namespace` and a token for it (TokenRequest).
    pub async fn service_account_token(&self, namespace: &str, name: &str) -> String {
        let sa: Api<k8s_openapi::api::core::v1::ServiceAccount> =
            Api::namespaced(self.admin.clone(), namespace);
        let body = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
        match sa.create(&PostParams::default(), &body).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => panic!("create ServiceAccount {namespace}/{name}: {e}"),
        }
        let request: k8s_openapi::api::authentication::v1::TokenRequest =
            serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))
                .unwrap();
        let issued = sa
            .create_token_request(name, &PostParams::default(), &request)
            .await
            .expect("a token for the ServiceAccount");
        issued.status.expect("a token").token
    }

    /// Deletes what the scenario created, newest first, ignoring what is already gone.
    pub async fn cleanup(&self) {
        let created: Vec<(ApiResource, String)> =
            self.created.lock().unwrap().drain(..).rev().collect();
        for (ar, name) in created {
            let api: Api<DynamicObject> = Api::all_with(self.admin.clone(), &ar);
            let _ = api.delete(&name, &DeleteParams::default()).await;
        }
    }

    /// Runs `scenario`, then cleans up, then re-raises the scenario's panic if it failed.
    pub async fn run<F, Fut>(self, scenario: F)
    where
        F: FnOnce(Arc<Cluster>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let cluster = Arc::new(self);
        let outcome = tokio::spawn(scenario(Arc::clone(&cluster))).await;
        cluster.cleanup().await;
        if let Err(e) = outcome {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("the scenario was cancelled: {e}");
        }
    }
}

/// The `ApiResource` of a kind (namespaced or not) from its apiVersion, kind and plural.
pub fn resource(api_version: &str, kind: &str, plural: &str) -> ApiResource {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    cluster_scoped(group, version, kind, plural)
}
