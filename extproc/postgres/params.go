package postgres

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"math"
	"strconv"

	"github.com/vigilaudit/vigil/audit"
)

// Type OIDs vigil renders in binary format; others are shown as hex.
const (
	oidBool    = 16
	oidBytea   = 17
	oidInt8    = 20
	oidInt2    = 21
	oidInt4    = 23
	oidOID     = 26
	oidFloat4  = 700
	oidFloat8  = 701
	oidUUID    = 2950
	formatText = 0
)

// renderParameters renders bound values by their format codes, as the
// protocol defines them: no codes means all text, one code applies to
// all, otherwise one code per parameter.
func renderParameters(formats []int16, values [][]byte, oids []uint32) []audit.Parameter {
	out := make([]audit.Parameter, len(values))
	for i, v := range values {
		f := int16(formatText)
		switch {
		case len(formats) == 1:
			f = formats[0]
		case i < len(formats):
			f = formats[i]
		}
		var oid uint32
		if i < len(oids) {
			oid = oids[i]
		}
		out[i] = renderParameter(f, v, oid)
	}
	return out
}

func renderParameter(format int16, v []byte, oid uint32) audit.Parameter {
	p := audit.Parameter{Format: "text", TypeOID: oid}
	if format != formatText {
		p.Format = "binary"
	}
	switch {
	case v == nil:
		p.Null = true
	case format == formatText:
		p.Value = string(v)
	default:
		p.Value = renderBinary(v, oid)
	}
	return p
}

// renderBinary shows a binary value as its text form for common types and
// as PostgreSQL's hex bytea notation otherwise.
func renderBinary(v []byte, oid uint32) string {
	switch {
	case oid == oidBool && len(v) == 1:
		return strconv.FormatBool(v[0] != 0)
	case oid == oidInt2 && len(v) == 2:
		return strconv.Itoa(int(int16(binary.BigEndian.Uint16(v))))
	case (oid == oidInt4 || oid == oidOID) && len(v) == 4:
		if oid == oidOID {
			return strconv.FormatUint(uint64(binary.BigEndian.Uint32(v)), 10)
		}
		return strconv.Itoa(int(int32(binary.BigEndian.Uint32(v))))
	case oid == oidInt8 && len(v) == 8:
		return strconv.FormatInt(int64(binary.BigEndian.Uint64(v)), 10)
	case oid == oidFloat4 && len(v) == 4:
		return strconv.FormatFloat(float64(math.Float32frombits(binary.BigEndian.Uint32(v))),
			'g', -1, 32)
	case oid == oidFloat8 && len(v) == 8:
		return strconv.FormatFloat(math.Float64frombits(binary.BigEndian.Uint64(v)), 'g', -1, 64)
	case oid == oidUUID && len(v) == 16:
		return fmt.Sprintf("%x-%x-%x-%x-%x", v[0:4], v[4:6], v[6:8], v[8:10], v[10:16])
	}
	return `\x` + hex.EncodeToString(v)
}
