//! The sandbox-provider factory: the provider of the kind the config names.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use cadre_actors::config::{SandboxConfig, SandboxKind};
use cadre_actors::sandbox::{SandboxError, SandboxProvider};

use crate::{GvisorProvider, KubernetesProvider, PodOwner, ProcessProvider};

/// The provider `config.provider` names, keeping its state under `data_dir` and running
/// `worker_bin` (`cadre worker`) in each sandbox (worker pods run their image's). `owner` is
/// the node, for the names and owner of its worker pods. Kinds this build does not have are
/// refused when the config is read.
pub async fn provider(
    config: &SandboxConfig,
    data_dir: &Path,
    worker_bin: PathBuf,
    owner: PodOwner,
) -> Result<Arc<dyn SandboxProvider>, SandboxError> {
    Ok(match config.provider {
        SandboxKind::Gvisor => {
            Arc::new(GvisorProvider::new(data_dir.join("sandboxes"), worker_bin)?)
        }
        // The config was validated: `allow_unsandboxed: true` is set.
        SandboxKind::Process => Arc::new(ProcessProvider::new(worker_bin, true)?),
        SandboxKind::Kubernetes => {
            let Some(kubernetes) = &config.kubernetes else {
                return Err(SandboxError::Unavailable(
                    "sandbox.provider `kubernetes` needs a `sandbox.kubernetes` section".into(),
                ));
            };
            Arc::new(
                KubernetesProvider::new(kubernetes.clone(), owner, config.workspace_bytes).await?,
            )
        }
    })
}
