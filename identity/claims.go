package identity

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"
)

// maxTokenSize bounds the raw tokens vigil parses. Entra tokens with many
// claims reach a few kilobytes; anything far larger is not a token.
const maxTokenSize = 64 << 10

// header is the part of the JOSE header vigil reads before verifying.
type header struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// claims are the token claims vigil reads. Field names follow Entra's
// access token claims reference.
type claims struct {
	Issuer   string       `json:"iss"`
	Audience audience     `json:"aud"`
	Expiry   *numericDate `json:"exp"`
	NotBef   *numericDate `json:"nbf"`
	Subject  string       `json:"sub"`

	TID       string   `json:"tid"`
	OID       string   `json:"oid"`
	Ver       string   `json:"ver"`
	AZP       string   `json:"azp"`
	AppID     string   `json:"appid"`
	IDType    string   `json:"idtyp"`
	Name      string   `json:"name"`
	UPN       string   `json:"upn"`
	Preferred string   `json:"preferred_username"`
	MIRID     string   `json:"xms_mirid"`
	Roles     []string `json:"roles"`
	Groups    []string `json:"groups"`
	UTI       string   `json:"uti"`

	// ClaimNames is the overage marker: {"groups": "src1"} when the token
	// had too many groups to carry them.
	ClaimNames map[string]string `json:"_claim_names"`
}

// overage reports whether the token replaced its groups claim by an
// overage marker.
func (c *claims) overage() bool {
	_, ok := c.ClaimNames["groups"]
	return ok
}

// audience is aud, a string or an array of strings.
type audience []string

func (a *audience) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*a = audience{s}
		return nil
	}
	var l []string
	if err := json.Unmarshal(b, &l); err != nil {
		return fmt.Errorf("aud: want a string or a list of strings")
	}
	*a = l
	return nil
}

// numericDate is a JWT NumericDate: seconds since the epoch, possibly
// with a fraction.
type numericDate time.Time

func (d *numericDate) UnmarshalJSON(b []byte) error {
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("want a number of seconds: %w", err)
	}
	f, err := n.Float64()
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || f < 0 || f > 1<<40 {
		return fmt.Errorf("want a number of seconds, got %s", n)
	}
	sec, frac := math.Modf(f)
	*d = numericDate(time.Unix(int64(sec), int64(frac*1e9)).UTC())
	return nil
}

// parseUnverified splits a compact JWS and decodes its header and claims
// without checking the signature. Its result only selects the issuer and
// keys to verify against; nothing in it is trusted.
func parseUnverified(raw string) (header, claims, error) {
	var h header
	var c claims
	if raw == "" {
		return h, c, refuse(ReasonMalformed, "no token was presented")
	}
	if len(raw) > maxTokenSize {
		return h, c, refuse(ReasonMalformed, "token is longer than %d bytes", maxTokenSize)
	}
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return h, c, refuse(ReasonMalformed, "token is not a JWT (want three dot-separated parts)")
	}
	if err := decodeSegment(parts[0], &h); err != nil {
		return h, c, refuseErr(ReasonMalformed, err, "token header is not valid")
	}
	if err := decodeSegment(parts[1], &c); err != nil {
		return h, c, refuseErr(ReasonMalformed, err, "token claims are not valid")
	}
	return h, c, nil
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return fmt.Errorf("identity: base64url: %w", err)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.UseNumber()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("identity: json: %w", err)
	}
	return nil
}
