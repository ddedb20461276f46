//! What `natwarden status` shows: the daemon renders its state as JSON for the control
//! socket, and the CLI turns that JSON into lines for a person.

use std::time::Instant;

use natwarden_core::{DropReason, Gateway};

use serde_json::{json, Value};

use crate::config::Settings;

const RESULT_NAMES: [&str; 6] = [
    "success",
    "unsupported-version",
    "not-authorized",
    "network-failure",
    "out-of-resources",
    "unsupported-opcode",
];

pub fn to_json(gw: &Gateway, settings: &Settings, now: Instant) -> Value {
    let mut mappings: Vec<Value> = gw
        .mappings()
        .map(|m| {
            json!({
                "client": m.key.client.to_string(),
                "protocol": m.key.protocol.name(),
                "internal_port": m.key.internal_port,
                "external_port": m.external_port,
                "lifetime_left": m.expires.saturating_duration_since(now).as_secs(),
                "origin": m.origin.name(),
                "nonce": m.nonce.as_ref().map(crate::state::nonce_hex),
                "kind": match (m.inbound, m.outbound, m.key.client.is_ipv6()) {
                    (_, _, true) => "pinhole",
                    (true, true, _) => "map+peer",
                    (false, true, _) => "peer",
                    _ => "map",
                },
            })
        })
        .collect();
    mappings.sort_by_key(|m| {
        (
            m["client"].as_str().map(str::to_owned),
            m["protocol"].as_str().map(str::to_owned),
            m["internal_port"].as_u64(),
        )
    });
    let s = gw.stats();
    let pcp_results: serde_json::Map<String, Value> = (0u8..14)
        .zip(s.pcp_results.iter())
        .map(|(code, c)| {
            (
                natwarden_wire::pcp::ResultCode(code)
                    .name()
                    .to_ascii_lowercase(),
                json!(c),
            )
        })
        .collect();
    let results: serde_json::Map<String, Value> = RESULT_NAMES
        .iter()
        .zip(s.results.iter())
        .map(|(n, c)| ((*n).to_string(), json!(c)))
        .collect();
    let drops: serde_json::Map<String, Value> = DropReason::ALL
        .iter()
        .map(|r| (r.name().to_string(), json!(s.drops_for(*r))))
        .collect();
    json!({
        "external_interface": settings.external_interface,
        "external_address": gw.external_address().map(|a| a.to_string()),
        "epoch": gw.epoch(now),
        "mappings": mappings,
        "counters": {
            "requests": s.requests,
            "results": results,
            "pcp_results": pcp_results,
            "drops": drops,
            "wan_drops": s.drops_for(DropReason::ExternalInterface),
            "mappings_created": s.mappings_created,
            "mappings_expired": s.mappings_expired,
        },
    })
}

/// One line per fact, then one per mapping.
pub fn render(v: &Value) -> String {
    let mut out = String::new();
    let addr = v["external_address"]
        .as_str()
        .unwrap_or("none (answering network failure)");
    out.push_str(&format!(
        "external address: {addr} on {}\n",
        v["external_interface"].as_str().unwrap_or("?")
    ));
    out.push_str(&format!("epoch: {} s\n", v["epoch"]));
    let c = &v["counters"];
    out.push_str(&format!("requests: {}\n", c["requests"]));
    for (proto, key) in [("NAT-PMP", "results"), ("PCP", "pcp_results")] {
        let Some(r) = c[key].as_object() else {
            continue;
        };
        let refused: Vec<String> = r
            .iter()
            .filter(|(k, n)| *k != "success" && n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!(
            "{proto} granted: {}; refused: {}\n",
            r.get("success").cloned().unwrap_or(json!(0)),
            if refused.is_empty() {
                "none".into()
            } else {
                refused.join(", ")
            }
        ));
    }
    if let Some(d) = c["drops"].as_object() {
        let dropped: Vec<String> = d
            .iter()
            .filter(|(_, n)| n.as_u64().unwrap_or(0) > 0)
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        out.push_str(&format!(
            "dropped: {}\n",
            if dropped.is_empty() {
                "none".into()
            } else {
                dropped.join(", ")
            }
        ));
    }
    let mappings = v["mappings"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!("mappings: {}\n", mappings.len()));
    for m in mappings {
        let client = m["client"].as_str().unwrap_or("?");
        let client = if client.contains(':') {
            format!("[{client}]")
        } else {
            client.to_string()
        };
        let nonce = m["nonce"]
            .as_str()
            .map(|n| format!(", nonce {n}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {} {}:{} <- external port {}, {} s left, by {} ({}{})\n",
            m["protocol"].as_str().unwrap_or("?"),
            client,
            m["internal_port"],
            m["external_port"],
            m["lifetime_left"],
            m["origin"].as_str().unwrap_or("?"),
            m["kind"].as_str().unwrap_or("?"),
            nonce,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_lists_facts_per_protocol_and_each_mapping() {
        let v = json!({
            "external_interface": "eth0",
            "external_address": null,
            "epoch": 42,
            "mappings": [{
                "client": "2001:db8:1::10", "protocol": "tcp", "internal_port": 8080,
                "external_port": 8080, "lifetime_left": 30, "origin": "pcp",
                "nonce": "00112233445566778899aabb", "kind": "pinhole"
            }],
            "counters": {
                "requests": 9,
                "results": {"success": 2, "not-authorized": 1},
                "pcp_results": {"success": 1, "address_mismatch": 3},
                "drops": {"external-interface": 5, "malformed": 0}
            }
        });
        let text = render(&v);
        for line in [
            "external address: none (answering network failure) on eth0",
            "epoch: 42 s",
            "NAT-PMP granted: 2; refused: not-authorized 1",
            "PCP granted: 1; refused: address_mismatch 3",
            "dropped: external-interface 5",
            "mappings: 1",
            "  tcp [2001:db8:1::10]:8080 <- external port 8080, 30 s left, by pcp (pinhole, nonce 00112233445566778899aabb)",
        ] {
            assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
        }
    }
}
