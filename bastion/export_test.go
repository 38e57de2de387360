package bastion

// WithoutWatch turns the directory watch off, leaving the periodic re-check alone.
func WithoutWatch(o Options) Options {
	o.noWatch = true
	return o
}
