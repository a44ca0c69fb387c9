//! `cadre certs`: a CA and the certificates a TLS node and its clients use, as `cockroach cert`
//! or `step` make them (rcgen), and a look inside a certificate file.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use serde_json::json;

use crate::{Failure, Output};

#[derive(Subcommand)]
pub enum CertsCommand {
    /// Make a CA, a node certificate, a client certificate and a worker certificate in DIR:
    /// ca.crt, ca.key, node.crt, node.key, client.crt, client.key, worker.crt, worker.key
    /// (keys readable by their owner only). The worker certificate is for the name
    /// `cadre-worker`: Kubernetes worker pods present it (see docs/kubernetes.md).
    Init {
        /// Where to write them (made if missing).
        dir: PathBuf,
        /// A name or address the node is reached at (repeat); default localhost, 127.0.0.1
        /// and ::1.
        #[arg(long = "host", value_name = "HOST")]
        hosts: Vec<String>,
        /// How long the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
        /// Replace files that exist (else they are kept and the command fails).
        #[arg(long)]
        force: bool,
    },
    /// Print a certificate's subject, issuer, names, validity and whether it is a CA.
    Show {
        /// A PEM certificate file.
        file: PathBuf,
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: Output,
    },
}

/// The files `certs init` writes, in order.
const FILES: [&str; 8] = [
    "ca.crt",
    "ca.key",
    "node.crt",
    "node.key",
    "client.crt",
    "client.key",
    "worker.crt",
    "worker.key",
];

pub fn run(command: CertsCommand) -> Result<(), Failure> {
    match command {
        CertsCommand::Init {
            dir,
            hosts,
            days,
            force,
        } => init(&dir, hosts, days, force),
        CertsCommand::Show { file, output } => show(&file, output),
    }
}

fn init(dir: &Path, hosts: Vec<String>, days: u32, force: bool) -> Result<(), Failure> {
    if days == 0 {
        return Err(Failure::Usage("--days: at least 1".into()));
    }
    let hosts = if hosts.is_empty() {
        vec!["localhost".into(), "127.0.0.1".into(), "::1".into()]
    } else {
        hosts
    };
    if !force && let Some(existing) = FILES.iter().map(|f| dir.join(f)).find(|f| f.exists()) {
        return Err(Failure::Usage(format!(
            "{}: exists; give --force to replace the certificates in {}",
            existing.display(),
            dir.display()
        )));
    }
    let made = make(&hosts, days).map_err(|e| anyhow::anyhow!("cannot make certificates: {e}"))?;
    std::fs::create_dir_all(dir)
        .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    for (name, pem) in FILES.iter().zip(made) {
        write(&dir.join(name), &pem, name.ends_with(".key"))?;
    }
    println!(
        "wrote {} (CA), {} (node: {}), {} (client), {} (worker: {}), valid {days} days",
        dir.join("ca.crt").display(),
        dir.join("node.crt").display(),
        hosts.join(", "),
        dir.join("client.crt").display(),
        dir.join("worker.crt").display(),
        cadre_sandbox::worker::WORKER_TLS_NAME,
    );
    Ok(())
}

/// The PEM texts of [`FILES`], in order.
fn make(hosts: &[String], days: u32) -> Result<Vec<String>, rcgen::Error> {
    let now = time::OffsetDateTime::now_utc();
    let until = now + time::Duration::days(i64::from(days));
    let named = |name: &str, sans: Vec<String>| -> Result<CertificateParams, rcgen::Error> {
        let mut params = CertificateParams::new(sans)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, name);
        dn.push(DnType::OrganizationName, "cadre");
        params.distinguished_name = dn;
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = until;
        Ok(params)
    };
    let ca_key = KeyPair::generate()?;
    let mut ca = named("cadre CA", Vec::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, &ca_key);

    let node_key = KeyPair::generate()?;
    let mut node = named("cadre node", hosts.to_vec())?;
    node.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let node_cert = node.signed_by(&node_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client = named("cadre client", Vec::new())?;
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = client.signed_by(&client_key, &issuer)?;

    let worker_key = KeyPair::generate()?;
    let mut worker = named(
        "cadre worker",
        vec![cadre_sandbox::worker::WORKER_TLS_NAME.to_string()],
    )?;
    worker.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let worker_cert = worker.signed_by(&worker_key, &issuer)?;
    Ok(vec![
        ca_cert.pem(),
        ca_key.serialize_pem(),
        node_cert.pem(),
        node_key.serialize_pem(),
        client_cert.pem(),
        client_key.serialize_pem(),
        worker_cert.pem(),
        worker_key.serialize_pem(),
    ])
}

/// Certificates for a node on 127.0.0.1 written to `dir` (benchmarks): the API's TLS files
/// and the CA's PEM.
pub fn for_loopback(dir: &Path) -> anyhow::Result<(cadre_actors::config::ApiTls, Vec<u8>)> {
    let made = make(&["127.0.0.1".to_string()], 1)?;
    std::fs::create_dir_all(dir)?;
    for (name, pem) in FILES.iter().zip(&made) {
        std::fs::write(dir.join(name), pem)?;
    }
    let tls = cadre_actors::config::ApiTls {
        cert_file: dir.join("node.crt"),
        key_file: dir.join("node.key"),
        client_ca_file: None,
    };
    Ok((tls, made[0].clone().into_bytes()))
}

fn write(path: &Path, text: &str, secret: bool) -> Result<(), Failure> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let fail = |e: std::io::Error| anyhow::anyhow!("cannot write {}: {e}", path.display());
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .map_err(fail)?;
    file.write_all(text.as_bytes()).map_err(fail)?;
    Ok(())
}

fn show(file: &Path, output: Output) -> Result<(), Failure> {
    use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
    let certs = cadre_actors::tls::read_certs(file).map_err(|e| Failure::Usage(e.to_string()))?;
    for der in certs {
        let (_, cert) = X509Certificate::from_der(&der).map_err(|e| {
            Failure::Usage(format!("{}: not an X.509 certificate: {e}", file.display()))
        })?;
        let names: Vec<String> = cert
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| match n {
                        GeneralName::DNSName(d) => d.to_string(),
                        GeneralName::IPAddress(ip) => ip_text(ip),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let validity = cert.validity();
        let value = json!({
            "subject": cert.subject().to_string(),
            "issuer": cert.issuer().to_string(),
            "names": names,
            "not_before": validity.not_before.to_string(),
            "not_after": validity.not_after.to_string(),
            "expired": !validity.is_valid(),
            "ca": cert.is_ca(),
        });
        match output {
            Output::Text => {
                println!(
                    "subject:    {}",
                    value["subject"].as_str().unwrap_or_default()
                );
                println!(
                    "issuer:     {}",
                    value["issuer"].as_str().unwrap_or_default()
                );
                println!("names:      {}", names.join(", "));
                println!(
                    "valid:      {} to {}{}",
                    validity.not_before,
                    validity.not_after,
                    if validity.is_valid() {
                        ""
                    } else {
                        " (not valid now)"
                    }
                );
                println!("ca:         {}", cert.is_ca());
            }
            _ => crate::emit(output, &value),
        }
    }
    Ok(())
}

/// An IP address SAN (4 or 16 bytes) as text.
fn ip_text(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => std::net::Ipv4Addr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")).to_string(),
        16 => std::net::Ipv6Addr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).to_string(),
        _ => format!("{bytes:02x?}"),
    }
}
