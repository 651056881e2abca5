//! NATS JetStream integration for the CIM infrastructure domain.
