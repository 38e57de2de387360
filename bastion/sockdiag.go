package bastion

import (
	"encoding/binary"
	"net"

	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"
)

// sockDiagEstablished lists the established TCP connections of the agent's network namespace
// through NETLINK_SOCK_DIAG (linux/inet_diag.h), one dump per address family with only
// TCP_ESTABLISHED in the request's state mask: the kernel skips every other socket, where a
// read of /proc/net/tcp formats, and the reader parses, every socket of the host in every
// state. A busy host keeps tens of thousands in TIME_WAIT (each lasts 60 s), and a session
// ended or learned waited on that read (BenchmarkScanConns). vishvananda/netlink carries the
// request and its multi-part answer; its own SocketDiagTCP asks for every state.
func sockDiagEstablished() ([]tcpEntry, error) {
	var out []tcpEntry
	for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
		req := nl.NewNetlinkRequest(nl.SOCK_DIAG_BY_FAMILY, unix.NLM_F_DUMP)
		req.AddData(inetDiagReq{family: family})
		var perr error
		err := req.ExecuteIter(unix.NETLINK_INET_DIAG, nl.SOCK_DIAG_BY_FAMILY, func(msg []byte) bool {
			e, ok := parseInetDiagMsg(msg)
			if ok {
				out = append(out, e)
			}
			return true
		})
		if perr != nil {
			return nil, perr
		}
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}

// inetDiagReq is struct inet_diag_req_v2 for TCP sockets of family in state ESTABLISHED, any
// address (a zero inet_diag_sockid).
type inetDiagReq struct{ family uint8 }

const (
	sizeofInetDiagReqV2 = 56 // family, protocol, ext, pad, states (u32), inet_diag_sockid (48)
	sizeofInetDiagMsg   = 72 // family, state, timer, retrans, inet_diag_sockid (48), expires, rqueue, wqueue, uid, inode
)

func (r inetDiagReq) Len() int { return sizeofInetDiagReqV2 }

func (r inetDiagReq) Serialize() []byte {
	b := make([]byte, sizeofInetDiagReqV2)
	b[0], b[1] = r.family, unix.IPPROTO_TCP
	binary.NativeEndian.PutUint32(b[4:8], 1<<tcpEstablished) // idiag_states
	return b
}

// parseInetDiagMsg reads a struct inet_diag_msg: the remote address and port (idiag_dst,
// idiag_dport, network order) and the socket's inode.
func parseInetDiagMsg(b []byte) (tcpEntry, bool) {
	if len(b) < sizeofInetDiagMsg || b[1] != tcpEstablished {
		return tcpEntry{}, false
	}
	port := binary.BigEndian.Uint16(b[6:8])
	var ip net.IP
	switch b[0] {
	case unix.AF_INET:
		ip = net.IP(append([]byte(nil), b[24:28]...))
	case unix.AF_INET6:
		ip = net.IP(append([]byte(nil), b[24:40]...))
	default:
		return tcpEntry{}, false
	}
	return tcpEntry{remote: ip, port: uint64(port), inode: uint64(binary.NativeEndian.Uint32(b[68:72]))}, true
}
