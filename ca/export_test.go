package ca

// ForgetScreenedRSA empties the set of RSA moduli already screened, so a benchmark measures a
// key's first submission.
func ForgetScreenedRSA() { rsaScreened.reset() }
