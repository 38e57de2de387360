// Package monitoring holds no code: its tests check the Prometheus alert rules and the Grafana
// dashboard of deploy/prometheus and deploy/grafana against a running sshca server and bastion
// agent. It is a module of its own so that the Prometheus rule and PromQL parsers
// (github.com/prometheus/prometheus) stay out of the product's module graph.
package monitoring
