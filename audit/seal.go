package audit

import (
	"context"
	"crypto/hmac"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/sshca/sshca/store"
)

// Seals bind the stripes of an archive together. Each stripe's lines in an archive form its
// chain, and its signed base mark vouches for where it ends; but the stripes are independent
// chains, so all the lines of one stripe (its base mark with them) could be cut out of a file,
// or one stripe cut back to an earlier record, and the rest still verified. So Archive ends
// each run on a striped log with a seal line,
//
//	{"seal":[{"stripe":j,"first":f,"seq":s,"mac":"<64 hex>"},...],"seal_mac":"<64 hex>"}
//
// naming, for every stripe the file holds (in stripe order), the sequence number of its first
// entry in the file (0 when it holds only base marks of it), and the sequence number and MAC of
// its last: where the file, up to the seal, ends. VerifyArchive checks each seal against the
// stripes as read up to it. The seal's MAC is
//
//	hex(HMAC-SHA256(key, "sshca-audit-seal-v1\x00" ‖ for each head: "j f s mac\n"))
//
// (SHA-256 without a key); the context string keeps it from standing in for a record's or a
// base mark's MAC. A file whose last run was cut short before its seal is not Sealed; the next
// `sshca audit archive` to it seals it.
//
// A seal vouches for what comes before it, not for itself: the last run's seal deleted, with
// or without the run's lines, leaves a file that reads as one whose run was cut short, or as
// the file before that run. So Archive keeps in Redis the seal line it wrote
// (Keys.AuditSealed), after the file holding it is synced and no later than it trims any
// record it seals (in the step that trims stripe 0): every record gone from Redis is then
// covered by a seal Redis names, and CheckSealed
// (in VerifyAfter and before Archive appends) requires the archive to hold that seal. Lines
// after it are a run that did not complete, whose records Redis still holds.

// SealHead is one stripe's place in a seal.
type SealHead struct {
	Stripe int    `json:"stripe"`
	First  uint64 `json:"first"` // the stripe's first entry in the file (0: base marks only)
	Seq    uint64 `json:"seq"`   // its last entry in the file (or the base mark's)
	MAC    string `json:"mac"`
}

const sealContext = "sshca-audit-seal-v1\x00"

func (l *Log) sealMAC(heads []SealHead) string {
	h := l.hash()
	h.Write([]byte(sealContext))
	for _, s := range heads {
		h.Write([]byte(strconv.Itoa(s.Stripe) + " " + strconv.FormatUint(s.First, 10) + " " + strconv.FormatUint(s.Seq, 10) + " " + s.MAC + "\n"))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// sealSigned checks a seal's MAC and form, not what it names.
func (l *Log) sealSigned(a archived) error {
	if !hmac.Equal([]byte(a.SealMAC), []byte(l.sealMAC(a.Seal))) {
		return fmt.Errorf("the seal is not signed with the audit key: the archive was changed")
	}
	last := -1
	for _, h := range a.Seal {
		if h.Stripe <= last || h.Stripe >= MaxStripes || !isMAC(h.MAC) || h.Seq == 0 {
			return fmt.Errorf("malformed seal: head %+v", h)
		}
		last = h.Stripe
	}
	return nil
}

// checkSeal checks a seal line against the stripes as read up to it.
func (l *Log) checkSeal(a archived, stripes []ArchiveStripe) error {
	if err := l.sealSigned(a); err != nil {
		return err
	}
	named := map[int]SealHead{}
	for _, h := range a.Seal {
		named[h.Stripe] = h
	}
	for j, st := range stripes {
		h, ok := named[j]
		switch {
		case !st.positioned() && ok:
			return fmt.Errorf("the seal says stripe %d ends at record %d, and the archive holds none of it: its lines were cut out", j, h.Seq)
		case !st.positioned():
			continue
		case !ok:
			return fmt.Errorf("stripe %d is in the archive, and not in its seal: its lines were added", j)
		}
		first := uint64(0)
		if st.Entries > 0 {
			first = st.FirstSeq
		}
		if st.LastSeq != h.Seq || st.LastMAC != h.MAC || first != h.First {
			return fmt.Errorf("stripe %d: the archive holds records %d to %d, its seal says %d to %d (%.16s…): lines of the stripe were cut out, or the stripe cut back", j, first, st.LastSeq, h.First, h.Seq, h.MAC)
		}
		delete(named, j)
	}
	for j, h := range named {
		return fmt.Errorf("the seal says stripe %d ends at record %d, and the archive holds none of it: its lines were cut out", j, h.Seq)
	}
	return nil
}

// checkArchiveClaims checks the checkpoints cps of an archive against the stripes it holds
// (stripes, and the 8-byte MAC prefixes of each one's entries from its first in the file on),
// as checkClaims does against the chain in Redis: a named record the file holds must be the
// one named, else the stripe was rewritten. sealed: the file up to here is sealed (checked at
// each seal), and then a record named beyond the file's end of a stripe walked after the
// checkpoint's (j > its stripe) is a stripe cut short: Archive walks the stripes in order,
// each up to the head it read first, so a checkpoint archived from stripe i names only
// records of stripe j > i that were in Redis when stripe j was walked, and archived with it.
// A record named beyond the end of a stripe walked before (j < i) may have been appended while
// the archive ran (VerifyAfter finds it in Redis); one before the file's first of its stripe
// is in an earlier archive.
func checkArchiveClaims(cps []walkedCheckpoint, stripes []ArchiveStripe, macs [][]uint64, sealed bool) error {
	for _, cp := range cps {
		for _, h := range cp.c.Heads {
			j := h.Stripe
			var st ArchiveStripe
			var m []uint64
			if j < len(stripes) {
				st, m = stripes[j], macs[j]
			}
			if !st.positioned() {
				// The file holds nothing of the stripe (the seal says so too): what the
				// checkpoint names of it is in an earlier archive, or in Redis.
				continue
			}
			if st.Entries > 0 && h.Seq >= st.FirstSeq && h.Seq < st.FirstSeq+uint64(len(m)) {
				if m[h.Seq-st.FirstSeq] != macPrefix(h.MAC) {
					return &StripeCutError{j, fmt.Sprintf("audit: archive: stripe %d was rewritten: its record %d is not the one stripe %d's checkpoint (record %d) names (%.16s…)", j, h.Seq, cp.stripe, cp.seq, h.MAC)}
				}
				continue
			}
			if sealed && j > cp.stripe && h.Seq > st.LastSeq {
				return &StripeCutError{j, fmt.Sprintf("audit: archive: stripe %d was cut short: stripe %d's checkpoint (record %d) names its record %d (%.16s…), and the archive holds it up to record %d", j, cp.stripe, cp.seq, h.Seq, h.MAC, st.LastSeq)}
			}
		}
	}
	return nil
}

// recordedSeal is the seal the last completed archive run recorded in Redis: nil when there
// is none; an error when it is malformed or not signed with the key.
func (l *Log) recordedSeal(ctx context.Context) (*archived, error) {
	v, err := l.rdb.Get(ctx, store.Keys{Prefix: l.prefix}.AuditSealed()).Result()
	if err == redis.Nil {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("audit: read: %w", err)
	}
	var a archived
	if err := json.Unmarshal([]byte(v), &a); err != nil || len(a.Seal) == 0 || a.Stripe != 0 || a.Seq != 0 || a.Rec != nil || a.Base != "" {
		return nil, fmt.Errorf("audit: the seal of the last archive run recorded in Redis (%s) is malformed: %.120q", store.Keys{Prefix: l.prefix}.AuditSealed(), v)
	}
	if err := l.sealSigned(a); err != nil {
		return nil, fmt.Errorf("audit: the seal of the last archive run recorded in Redis: %w", err)
	}
	return &a, nil
}

// CheckSealed checks that the archive ar (as VerifyArchive found it) holds the seal that the
// last completed archive run recorded in Redis (Keys.AuditSealed). recorded is false when
// Redis holds none (archived by sshca before stop 17, or never while striped): then nothing
// is checked. The error, when ar lacks the seal, says which stripe ends the seal names: the
// archive was cut back before that seal (the last run's seal deleted, with or without its
// lines), or it is not the latest archive.
func (l *Log) CheckSealed(ctx context.Context, ar ArchiveReport) (recorded bool, err error) {
	rec, err := l.recordedSeal(ctx)
	if err != nil || rec == nil {
		return false, err
	}
	for _, m := range ar.sealMACs {
		if m == rec.SealMAC {
			return true, nil
		}
	}
	var named, holds []string
	for _, h := range rec.Seal {
		named = append(named, fmt.Sprintf("stripe %d up to record %d", h.Stripe, h.Seq))
	}
	for j, st := range ar.Stripes {
		if st.positioned() {
			holds = append(holds, fmt.Sprintf("stripe %d up to record %d", j, st.LastSeq))
		}
	}
	has := "nothing"
	if len(holds) > 0 {
		has = strings.Join(holds, ", ")
	}
	return true, fmt.Errorf("audit: the last archive run sealed %s (seal %.16s…, as Redis records it), and the archive does not hold that seal (it holds %s, and %d seals): lines were cut from its end (the last run's seal, or the run with it), or this is not the latest archive", strings.Join(named, ", "), rec.SealMAC, has, len(ar.sealMACs))
}
