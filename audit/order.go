package audit

// InTimeOrder merges entries of any stripes, each stripe's in chain order (as Verify and
// VerifyArchive hand them out, archives first), into one sequence by record time: each
// stripe's entries keep their chain order, and of the entries next in each stripe the one with
// the earliest time goes first (the lowest stripe on a tie). Across stripes the order is as
// good as the clocks of the replicas that wrote the records; within a stripe it is the chain's.
// Entries of one stripe come back as they were.
func InTimeOrder(entries []Entry) []Entry {
	var order []int // stripes in the order first seen
	by := map[int][]Entry{}
	for _, e := range entries {
		if _, ok := by[e.Stripe]; !ok {
			order = append(order, e.Stripe)
		}
		by[e.Stripe] = append(by[e.Stripe], e)
	}
	if len(order) < 2 {
		return entries
	}
	out := make([]Entry, 0, len(entries))
	for len(out) < len(entries) {
		best := -1
		for _, s := range order {
			q := by[s]
			if len(q) == 0 {
				continue
			}
			if best < 0 {
				best = s
				continue
			}
			b := by[best][0]
			if q[0].Record.Time.Before(b.Record.Time) || (q[0].Record.Time.Equal(b.Record.Time) && s < best) {
				best = s
			}
		}
		out = append(out, by[best][0])
		by[best] = by[best][1:]
	}
	return out
}
