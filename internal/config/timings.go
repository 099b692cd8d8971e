package config

import (
	"fmt"
	"time"
)

// MinRetryPeriod is the shortest retry period accepted. A holder that
// hears the API server come back keeps holding for half a retry period
// while it renews; below this, an API round trip on a loaded node would not
// fit into that grace and every API outage would end in a needless move.
const MinRetryPeriod = 100 * time.Millisecond

// checkTimings refuses election timings for which the safety argument in
// docs/election.md does not hold:
//
//   - 2 × retry period ≤ renew deadline: a holder renews every renew
//     deadline / 2; when a renewal fails or hangs for half a retry period it
//     tells its peers, and they confirm or deny an outage they share within
//     another half. Both must fit before its deadline.
//   - renew deadline + retry period ≤ lease duration: a holder that cannot
//     renew stops holding at its renew deadline; the others may take over
//     once its node Lease is a lease duration old. The retry period between
//     the two covers timer and scheduling latency on a loaded node and the
//     time it takes to remove the addresses.
func checkTimings(c Config, lease, renew, retry source) error {
	switch {
	case c.RetryPeriod < MinRetryPeriod:
		return fmt.Errorf("%s is below the minimum of %v", retry.describe(c.RetryPeriod), MinRetryPeriod)
	case c.RenewDeadline >= c.LeaseDuration:
		return fmt.Errorf("%s must be shorter than %s", renew.describe(c.RenewDeadline), lease.describe(c.LeaseDuration))
	case c.RetryPeriod >= c.RenewDeadline:
		return fmt.Errorf("%s must be shorter than %s", retry.describe(c.RetryPeriod), renew.describe(c.RenewDeadline))
	case 2*c.RetryPeriod > c.RenewDeadline:
		return fmt.Errorf("%s must be at most half of %s: a holder needs a regular renewal and the check of a shared API outage to fit before its deadline",
			retry.describe(c.RetryPeriod), renew.describe(c.RenewDeadline))
	case c.RenewDeadline+c.RetryPeriod > c.LeaseDuration:
		return fmt.Errorf("%s must be at least %s plus %s: a holder that cannot renew must be gone before the others may take over",
			lease.describe(c.LeaseDuration), renew.describe(c.RenewDeadline), retry.describe(c.RetryPeriod))
	}
	return nil
}
