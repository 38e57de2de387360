// Package bastion is what a hardened bastion host runs next to sshd: the agent that keeps
// sshd's RevokedKeys file (an OpenSSH KRL) and TrustedUserCAKeys file current from Redis, or
// from the CA's HTTPS endpoint when Redis is out of reach, and ends live sessions of revoked
// certificates. The agent fails static: without a source it keeps the last good files, never
// installs an older KRL over a newer one, and never installs a file sshd could not read (sshd
// treats an unreadable KRL as "everything revoked"). It keeps those files true: a file
// deleted or changed behind its back is put back (watch.go), and a link sshd reads through
// that it cannot repair stops it with health red. SSHDEffective reads sshd's effective
// configuration (sshd -T -C), which the agent checks against the baseline (drift.go).
// SSHDConfig renders the hardened sshd_config that goes with it (deploy/bastion/sshd_config
// is its default rendering): sshca certificates only, the agent's KRL enforced, modern
// algorithms, forwarding only where the certificate grants it, and a closing Match all block
// that appended Match blocks cannot override.
package bastion
