//! `cadre health`: asks a node's probe (gRPC health) whether it is started, live or ready, as
//! Kubernetes' probes do (`deploy/base/statefulset.yaml`). Exit 0 when it is, 1 when it is not.

use clap::{Args, ValueEnum};
use serde_json::json;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::client::{ServerArgs, connect};
use crate::{Failure, Output};

#[derive(Args)]
pub struct HealthArgs {
    /// startup: the trees started and their tools validated; live: the node's event loop
    /// answers; ready: it can take work (its log answers, its pool has room, not stopping).
    #[arg(value_enum, default_value_t = Probe::Ready)]
    probe: Probe,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    output: Output,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Clone, Copy, ValueEnum)]
enum Probe {
    Startup,
    Live,
    Ready,
}

pub async fn run(args: HealthArgs) -> Result<(), Failure> {
    let (name, service) = match args.probe {
        Probe::Startup => ("startup", cadre_cluster::probes::STARTUP),
        Probe::Live => ("live", cadre_cluster::probes::LIVE),
        Probe::Ready => ("ready", cadre_cluster::probes::READY),
    };
    let answer = HealthClient::new(connect(&args.server).await?)
        .check(HealthCheckRequest {
            service: service.to_string(),
        })
        .await
        .map_err(|s| crate::conversations::failure("Check", s))?
        .into_inner();
    let serving = answer.status == ServingStatus::Serving as i32;
    match args.output {
        Output::Json | Output::Yaml => {
            crate::emit(args.output, &json!({ "probe": name, "ok": serving }));
        }
        Output::Text => println!("{name}: {}", if serving { "ok" } else { "not ok" }),
    }
    if serving {
        Ok(())
    } else {
        Err(Failure::Runtime(anyhow::anyhow!("the node is not {name}")))
    }
}
