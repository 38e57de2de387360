package bastion

import "time"

// ReadNoFollow reads path as discovery does, through openat2 (walk false) or the
// per-component walk of kernels without it (walk true).
func ReadNoFollow(path string, max int64, walk bool) ([]byte, time.Time, error) {
	open := openNoFollow
	if walk {
		open = walkNoFollow
	}
	return readNoFollow(open, path, max)
}
