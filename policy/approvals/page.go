package approvals

import (
	_ "embed"
	"html/template"
	"net/http"
)

//go:embed page.html
var pageHTML string

// pageTemplate is the approvals page. It holds no request data: its script
// fetches the pending requests with the approver's token and builds the
// rows with textContent, so no statement, parameter or name is ever parsed
// as HTML.
var pageTemplate = template.Must(template.New("page").Parse(pageHTML))

// pageData fills the template.
type pageData struct {
	Nonce string // for the inline script and style, per answer
	API   string // the API's path
}

// page serves the approvals page with a Content-Security-Policy that lets
// only its own inline script and style run and lets it call only this
// origin.
func (s *Service) page(w http.ResponseWriter, r *http.Request) {
	n := nonce()
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'nonce-"+n+
		"'; style-src 'nonce-"+n+"'; connect-src 'self'; base-uri 'none'; "+
		"form-action 'none'; frame-ancestors 'none'")
	if err := pageTemplate.Execute(w, pageData{Nonce: n, API: "/api/approvals"}); err != nil {
		s.log.Warn("approvals: page", "err", err)
	}
}
