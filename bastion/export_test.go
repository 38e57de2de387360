package bastion

// WithoutWatch turns the directory watch off, leaving the periodic re-check alone.
func WithoutWatch(o Options) Options {
	o.noWatch = true
	return o
}

// AfterPass makes c run f between each pass and the watches it leads to.
func AfterPass(c *StartupCheck, f func()) { c.afterPass = f }
