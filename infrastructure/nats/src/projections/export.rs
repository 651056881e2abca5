//! Drawing a [`Topology`]: Graphviz DOT and Mermaid flowcharts.

use std::fmt::Write as _;

use cim_domain_infrastructure::{ConnectionId, InfrastructureId, NetworkId, ResourceId};

use super::topology::{ComputeResourceView, ConnectionView, NetworkView, Topology};

/// Node ids: a letter, an underscore and the UUID's 32 hex digits, valid unquoted in DOT and
/// in Mermaid.
fn resource_node(id: ResourceId) -> String {
    format!("r_{}", id.as_uuid().simple())
}

fn network_node(id: NetworkId) -> String {
    format!("n_{}", id.as_uuid().simple())
}

fn cluster(id: InfrastructureId) -> String {
    format!("i_{}", id.as_uuid().simple())
}

fn link_id(id: ConnectionId) -> String {
    format!("c_{}", id.as_uuid().simple())
}

/// Text inside a DOT double-quoted string; lines are joined with DOT's `\n`.
fn dot_text(lines: &[&str]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|line| {
            let mut out = String::with_capacity(line.len());
            for c in line.chars() {
                match c {
                    '\\' => out.push_str("\\\\"),
                    '"' => out.push_str("\\\""),
                    '\n' | '\r' => out.push(' '),
                    c => out.push(c),
                }
            }
            out
        })
        .collect();
    escaped.join("\\n")
}

/// Text inside a Mermaid double-quoted label; lines are joined with `<br/>`.
fn mermaid_text(lines: &[&str]) -> String {
    let escaped: Vec<String> = lines
        .iter()
        .map(|line| {
            let mut out = String::with_capacity(line.len());
            for c in line.chars() {
                match c {
                    '#' => out.push_str("#35;"),
                    '"' => out.push_str("#quot;"),
                    '<' => out.push_str("#lt;"),
                    '>' => out.push_str("#gt;"),
                    '\n' | '\r' => out.push(' '),
                    c => out.push(c),
                }
            }
            out
        })
        .collect();
    escaped.join("<br/>")
}

fn resource_lines(resource: &ComputeResourceView) -> Vec<String> {
    let mut lines = vec![resource.hostname.to_string(), resource.system.to_string()];
    if !resource.is_active() {
        lines.push("(decommissioned)".to_owned());
    }
    lines
}

fn network_lines(network: &NetworkView) -> [String; 2] {
    [network.name.clone(), network.cidr.to_string()]
}

fn connection_label(topology: &Topology, connection: &ConnectionView) -> [String; 2] {
    let network = topology
        .network(connection.network)
        .map_or_else(|| connection.network.to_string(), |n| n.name.clone());
    [connection.kind.to_string(), network]
}

fn refs(lines: &[String]) -> Vec<&str> {
    lines.iter().map(String::as_str).collect()
}

impl Topology {
    /// The topology as a Graphviz `digraph`, for `dot -Tsvg`.
    ///
    /// Each infrastructure is a cluster holding its networks (ellipses labelled with name and
    /// CIDR) and compute resources (boxes labelled with host name and system). Decommissioned
    /// resources are drawn grey and dashed, marked `(decommissioned)`. Each connection is an
    /// edge from one resource to the other, labelled with its kind and its network's name; a
    /// dashed grey line ties each network to the resources it connects. The output is the same
    /// for the same topology (everything is sorted by id).
    ///
    /// ```
    /// use cim_infrastructure_nats::projections::Topology;
    ///
    /// let dot = Topology::new().to_dot();
    /// assert!(dot.starts_with("digraph infrastructure {"));
    /// ```
    pub fn to_dot(&self) -> String {
        let mut out = String::new();
        out.push_str("digraph infrastructure {\n");
        out.push_str("  graph [rankdir=LR, fontname=\"Helvetica\"];\n");
        out.push_str("  node [fontname=\"Helvetica\", fontsize=11];\n");
        out.push_str("  edge [fontname=\"Helvetica\", fontsize=9];\n");
        for infrastructure in self.infrastructures() {
            let part = self.of_infrastructure(infrastructure);
            let _ = writeln!(out, "  subgraph cluster_{} {{", cluster(infrastructure));
            let _ = writeln!(
                out,
                "    label=\"{}\";",
                dot_text(&[&format!("infrastructure {infrastructure}")])
            );
            out.push_str("    style=rounded;\n    color=\"#888888\";\n");
            for network in part.active_networks() {
                let _ = writeln!(
                    out,
                    "    {} [shape=ellipse, style=filled, fillcolor=\"#e8f0fe\", label=\"{}\"];",
                    network_node(network.id),
                    dot_text(&refs(&network_lines(network)))
                );
            }
            for resource in part.resources() {
                let label = dot_text(&refs(&resource_lines(resource)));
                if resource.is_active() {
                    let _ = writeln!(
                        out,
                        "    {} [shape=box, style=rounded, label=\"{label}\"];",
                        resource_node(resource.id)
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "    {} [shape=box, style=\"rounded,dashed\", color=gray, \
                         fontcolor=gray, label=\"{label}\"];",
                        resource_node(resource.id)
                    );
                }
            }
            out.push_str("  }\n");
        }
        for network in self.active_networks() {
            for resource in self.resources_on_network(network.id) {
                let _ = writeln!(
                    out,
                    "  {} -> {} [style=dashed, color=gray, arrowhead=none];",
                    network_node(network.id),
                    resource_node(resource.id)
                );
            }
        }
        for connection in self.active_connections() {
            let _ = writeln!(
                out,
                "  {} -> {} [id=\"{}\", label=\"{}\"];",
                resource_node(connection.from),
                resource_node(connection.to),
                link_id(connection.id),
                dot_text(&refs(&connection_label(self, connection)))
            );
        }
        out.push_str("}\n");
        out
    }

    /// The topology as a Mermaid `flowchart`, for Markdown renderers that draw Mermaid.
    ///
    /// Each infrastructure is a subgraph holding its networks (rounded nodes with name and
    /// CIDR) and compute resources (boxes with host name and system); decommissioned resources
    /// carry the class `decommissioned` (grey, dashed). Each connection is an arrow labelled
    /// with its kind and network; a dotted line ties each network to the resources it connects.
    ///
    /// ```
    /// use cim_infrastructure_nats::projections::Topology;
    ///
    /// assert!(Topology::new().to_mermaid().starts_with("flowchart LR"));
    /// ```
    pub fn to_mermaid(&self) -> String {
        let mut out = String::new();
        out.push_str("flowchart LR\n");
        let mut decommissioned = Vec::new();
        for infrastructure in self.infrastructures() {
            let part = self.of_infrastructure(infrastructure);
            let _ = writeln!(
                out,
                "  subgraph {} [\"{}\"]",
                cluster(infrastructure),
                mermaid_text(&[&format!("infrastructure {infrastructure}")])
            );
            for network in part.active_networks() {
                let _ = writeln!(
                    out,
                    "    {}([\"{}\"])",
                    network_node(network.id),
                    mermaid_text(&refs(&network_lines(network)))
                );
            }
            for resource in part.resources() {
                let _ = writeln!(
                    out,
                    "    {}[\"{}\"]",
                    resource_node(resource.id),
                    mermaid_text(&refs(&resource_lines(resource)))
                );
                if !resource.is_active() {
                    decommissioned.push(resource_node(resource.id));
                }
            }
            out.push_str("  end\n");
        }
        for network in self.active_networks() {
            for resource in self.resources_on_network(network.id) {
                let _ = writeln!(
                    out,
                    "  {} -.- {}",
                    network_node(network.id),
                    resource_node(resource.id)
                );
            }
        }
        for connection in self.active_connections() {
            let [kind, network] = connection_label(self, connection);
            let _ = writeln!(
                out,
                "  {} -->|\"{}\"| {}",
                resource_node(connection.from),
                mermaid_text(&[&format!("{kind} on {network}")]),
                resource_node(connection.to)
            );
        }
        if !decommissioned.is_empty() {
            out.push_str(
                "  classDef decommissioned fill:#eeeeee,stroke:#999999,color:#999999,\
                 stroke-dasharray:5 5\n",
            );
            let _ = writeln!(out, "  class {} decommissioned", decommissioned.join(","));
        }
        out
    }
}
