package approvals

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/vigilaudit/vigil/identity"
)

// maxBody bounds the JSON body of a decision; a larger one is answered
// 413.
const maxBody = 64 << 10

// maxReason bounds a decision's reason, in bytes.
const maxReason = 2000

// View is how the HTTP API shows a request: the request, when it expires,
// how long it has waited, and (for a single request) its steps.
type View struct {
	Request  *Request  `json:"request"`
	Deadline time.Time `json:"deadline"`
	// WaitedSeconds is how long the request has waited (until its
	// decision, once decided).
	WaitedSeconds float64 `json:"waited_seconds"`
	Steps         []Step  `json:"steps,omitempty"`
}

// ListResponse is the body of GET /api/approvals.
type ListResponse struct {
	Requests []View `json:"requests"`
}

// DecisionBody is the body of POST /api/approvals/{id}/approve and /deny.
type DecisionBody struct {
	Reason string `json:"reason"`
}

// ErrorResponse is the body of every error answer. Cause is stable and
// machine-readable: missing_token, a token refusal reason of package
// identity (expired, wrong_audience, ...), self_approval, not_approver,
// not_pending, not_found, reason_required, bad_request, too_large, store.
type ErrorResponse struct {
	Error string `json:"error"`
	Cause string `json:"cause"`
}

// Handler serves the approvals API and page under their full paths:
//
//	GET  /api/approvals?status=pending   requests the caller may see; status
//	                                     approved, denied, expired, cancelled,
//	                                     or all (the same as empty): every one
//	GET  /api/approvals/{id}             one request with its steps
//	POST /api/approvals/{id}/approve     {"reason": "..."} (optional)
//	POST /api/approvals/{id}/deny        {"reason": "..."} (required)
//	GET  /approvals/                     the web page
//
// Mount it as is (mux.Handle("/approvals/", h); mux.Handle("/api/approvals",
// h); mux.Handle("/api/approvals/", h)), without stripping prefixes.
//
// Every API call needs Authorization: Bearer with the caller's access
// token, verified by the Service's identity.Verifier; missing or refused
// tokens get 401. Callers see only the requests they may decide (they hold
// one of the Approvers grants) or made themselves; others get 403. The
// page itself is static and holds no data: its script calls the API with
// the token the approver pastes (kept in the tab's sessionStorage).
func (s *Service) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/approvals", s.apiList)
	mux.HandleFunc("GET /api/approvals/{id}", s.apiGet)
	mux.HandleFunc("POST /api/approvals/{id}/approve", s.apiDecide(true))
	mux.HandleFunc("POST /api/approvals/{id}/deny", s.apiDecide(false))
	mux.HandleFunc("GET /approvals/{$}", s.page)
	mux.Handle("GET /approvals", http.RedirectHandler("/approvals/", http.StatusMovedPermanently))
	return headers(mux)
}

// headers sets what every answer carries: no caching (the data is
// sensitive), no framing (the page has buttons), no referrer.
func headers(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Cache-Control", "no-store")
		h.Set("X-Frame-Options", "DENY")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		next.ServeHTTP(w, r)
	})
}

func (s *Service) apiList(w http.ResponseWriter, r *http.Request) {
	who, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	status := r.URL.Query().Get("status")
	var rs []*Request
	var err error
	switch status {
	case StatusPending:
		rs, err = s.pending(r.Context())
	case "", "all":
		rs, err = s.store.List(r.Context(), "")
	case StatusApproved, StatusDenied, StatusExpired, StatusCancelled:
		rs, err = s.store.List(r.Context(), status)
	default:
		writeError(w, http.StatusBadRequest, "bad_request",
			"status must be pending, approved, denied, expired, cancelled or all")
		return
	}
	if err != nil {
		s.storeError(w, err)
		return
	}
	out := ListResponse{Requests: []View{}}
	for _, req := range rs {
		if visible(req, who) {
			out.Requests = append(out.Requests, s.view(req, nil))
		}
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Service) apiGet(w http.ResponseWriter, r *http.Request) {
	who, ok := s.authenticate(w, r)
	if !ok {
		return
	}
	req, steps, ok := s.lookup(w, r)
	if !ok {
		return
	}
	if !visible(req, who) {
		writeError(w, http.StatusForbidden, "not_approver",
			"you are neither the requester nor one of the approvers of this request")
		return
	}
	writeJSON(w, http.StatusOK, s.view(req, steps))
}

func (s *Service) apiDecide(approve bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		who, ok := s.authenticate(w, r)
		if !ok {
			return
		}
		id := r.PathValue("id")
		if !validID(id) {
			writeError(w, http.StatusNotFound, "not_found", "no such request")
			return
		}
		var body DecisionBody
		dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
		err := dec.Decode(&body)
		var tooLarge *http.MaxBytesError
		switch {
		case errors.As(err, &tooLarge):
			writeError(w, http.StatusRequestEntityTooLarge, "too_large",
				"the body is too large")
			return
		case err != nil && !errors.Is(err, io.EOF):
			writeError(w, http.StatusBadRequest, "bad_request",
				`the body must be JSON: {"reason": "..."}`)
			return
		}
		if len(body.Reason) > maxReason {
			writeError(w, http.StatusBadRequest, "bad_request", "the reason is too long")
			return
		}
		req, err := s.Decide(r.Context(), id, who, approve, body.Reason)
		if err != nil {
			s.decideError(w, err)
			return
		}
		writeJSON(w, http.StatusOK, s.view(req, nil))
	}
}

// decideError answers a failed decision with the status its cause calls
// for.
func (s *Service) decideError(w http.ResponseWriter, err error) {
	switch {
	case errors.Is(err, ErrSelfApproval):
		writeError(w, http.StatusForbidden, "self_approval", trimPrefix(err))
	case errors.Is(err, ErrNotApprover):
		writeError(w, http.StatusForbidden, "not_approver", trimPrefix(err))
	case errors.Is(err, ErrNotPending):
		writeError(w, http.StatusConflict, "not_pending", trimPrefix(err))
	case errors.Is(err, ErrReasonRequired):
		writeError(w, http.StatusBadRequest, "reason_required",
			`a denial needs a reason: {"reason": "..."}`)
	default:
		s.storeError(w, err)
	}
}

// lookup reads the request named in the path, answering 404 when there is
// none.
func (s *Service) lookup(w http.ResponseWriter, r *http.Request) (*Request, []Step, bool) {
	id := r.PathValue("id")
	if !validID(id) {
		writeError(w, http.StatusNotFound, "not_found", "no such request")
		return nil, nil, false
	}
	req, steps, err := s.store.Get(r.Context(), id)
	if err != nil {
		s.storeError(w, err)
		return nil, nil, false
	}
	return req, steps, true
}

func (s *Service) storeError(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrNotFound) {
		writeError(w, http.StatusNotFound, "not_found", "no such request")
		return
	}
	s.log.Error("approvals: store failed", "err", err)
	writeError(w, http.StatusInternalServerError, "store", "the approvals store failed")
}

// authenticate verifies the bearer token, answering 401 when it is
// missing or refused (503 when the issuer's keys or groups could not be
// fetched).
func (s *Service) authenticate(w http.ResponseWriter, r *http.Request) (*identity.Identity,
	bool) {
	scheme, tok, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	tok = strings.TrimSpace(tok)
	if !strings.EqualFold(scheme, "Bearer") || tok == "" {
		w.Header().Set("WWW-Authenticate", `Bearer realm="vigil"`)
		writeError(w, http.StatusUnauthorized, "missing_token",
			"send your Entra access token: Authorization: Bearer <token>")
		return nil, false
	}
	if s.verifier == nil {
		writeError(w, http.StatusServiceUnavailable, "no_verifier",
			"this vigil has no token verifier configured")
		return nil, false
	}
	id, err := s.verifier.Verify(r.Context(), tok)
	if err == nil {
		return id, true
	}
	var ie *identity.Error
	if !errors.As(err, &ie) {
		s.log.Warn("approvals: token check failed", "err", err)
		writeError(w, http.StatusUnauthorized, "invalid_token", "the token was refused")
		return nil, false
	}
	status := http.StatusUnauthorized
	if ie.Reason == identity.ReasonKeysUnavailable ||
		ie.Reason == identity.ReasonGroupsUnavailable {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("WWW-Authenticate", `Bearer realm="vigil", error="invalid_token"`)
	writeError(w, status, string(ie.Reason), ie.Message)
	return nil, false
}

// visible reports whether who may see req: an approver or the requester.
func visible(req *Request, who *identity.Identity) bool {
	if isSelf(req.Requester, who) {
		return true
	}
	_, ok := approverGrant(req.Approvers, who)
	return ok
}

func (s *Service) view(r *Request, steps []Step) View {
	end := s.now()
	if !r.Pending() {
		end = r.Decided
	}
	return View{Request: r, Deadline: r.Deadline(),
		WaitedSeconds: end.Sub(r.Created).Seconds(), Steps: steps}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, cause, msg string) {
	writeJSON(w, status, ErrorResponse{Error: msg, Cause: cause})
}

// trimPrefix drops the package prefix from err's message, for clients.
func trimPrefix(err error) string {
	return strings.TrimPrefix(err.Error(), "approvals: ")
}

// nonce returns a fresh value for the page's Content-Security-Policy.
func nonce() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}
