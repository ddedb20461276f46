//! What ships beside the binary: the systemd unit must load in systemd and keep its
//! hardening, and the example config must pass check-config (tested in the lab).

use std::process::Command;

const UNIT: &str = include_str!("../../../dist/natwarden.service");

#[test]
fn systemd_unit_verifies_with_the_built_binary() {
    // Point the unit at this build so systemd can check the executable exists.
    let unit = UNIT.replace("/usr/sbin/natwarden", env!("CARGO_BIN_EXE_natwarden"));
    let dir = std::env::temp_dir().join(format!("natwarden-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("natwarden.service");
    std::fs::write(&path, unit).expect("writing the unit");
    let out = match Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
    {
        Ok(o) => o,
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("systemd-analyze is needed under CI: {e}")
        }
        Err(_) => {
            eprintln!("skipping: systemd-analyze not installed");
            return;
        }
    };
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stderr);
    // The man page is not installed where systemd looks in a build tree; anything
    // else systemd complains about is a defect of the unit.
    let problems: Vec<&str> = text
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.contains("man natwarden"))
        .collect();
    assert!(problems.is_empty(), "systemd-analyze verify:\n{text}");
}

#[test]
fn systemd_unit_keeps_its_hardening() {
    for line in [
        // NET_RAW for the link-layer tap, opened at start-up and then dropped.
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW",
        "ProtectSystem=strict",
        "StateDirectory=natwarden",
        "NoNewPrivileges=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_NETLINK AF_UNIX AF_PACKET",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(
            UNIT.lines().any(|l| l.trim() == line),
            "dist/natwarden.service lacks `{line}`"
        );
    }
}
