package es8double

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"sort"
	"sync"
)

// Kibana is a Kibana 8 http.Handler serving POST /api/saved_objects/_import.
// It is safe for concurrent use.
type Kibana struct {
	apiKey string

	mu      sync.Mutex
	objects map[string]SavedObject // by type + "/" + id
}

// SavedObject is one imported Kibana object.
type SavedObject struct {
	Type       string          `json:"type"`
	ID         string          `json:"id"`
	Attributes json.RawMessage `json:"attributes"`
	References []Reference     `json:"references"`
}

// Reference is a saved object's reference to another.
type Reference struct {
	Name string `json:"name"`
	Type string `json:"type"`
	ID   string `json:"id"`
}

// NewKibana returns an empty Kibana. A non-empty apiKey is required on
// every request as "Authorization: ApiKey <apiKey>".
func NewKibana(apiKey string) *Kibana {
	return &Kibana{apiKey: apiKey, objects: map[string]SavedObject{}}
}

// Objects returns the stored objects sorted by type and id.
func (k *Kibana) Objects() []SavedObject {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make([]SavedObject, 0, len(k.objects))
	for _, o := range k.objects {
		out = append(out, o)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].Type+"/"+out[i].ID < out[j].Type+"/"+out[j].ID
	})
	return out
}

// ServeHTTP answers one Kibana request.
func (k *Kibana) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if k.apiKey != "" && r.Header.Get("Authorization") != "ApiKey "+k.apiKey {
		kibanaError(w, 401, "Unauthorized", "Unauthorized")
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead &&
		r.Header.Get("kbn-xsrf") == "" && r.Header.Get("kbn-version") == "" {
		kibanaError(w, 400, "Bad Request", "Request must contain a kbn-xsrf header.")
		return
	}
	if r.URL.Path != "/api/saved_objects/_import" || r.Method != http.MethodPost {
		kibanaError(w, 404, "Not Found", "Not Found")
		return
	}
	f, _, err := r.FormFile("file")
	if err != nil {
		kibanaError(w, 400, "Bad Request",
			"[request body.file]: expected value of type [Stream] but got [undefined]")
		return
	}
	defer f.Close()
	objs, err := readNDJSON(f)
	if err != nil {
		kibanaError(w, 400, "Bad Request", "Unexpected token in JSON: "+err.Error())
		return
	}
	kibanaJSON(w, 200, k.importObjects(objs, r.URL.Query().Get("overwrite") == "true"))
}

// importObjects stores objs unless one conflicts (without overwrite) or
// references something neither imported nor stored.
func (k *Kibana) importObjects(objs []SavedObject, overwrite bool) map[string]any {
	k.mu.Lock()
	defer k.mu.Unlock()
	present := map[string]bool{}
	for key := range k.objects {
		present[key] = true
	}
	for _, o := range objs {
		present[o.Type+"/"+o.ID] = true
	}
	var errs, ok []any
	for _, o := range objs {
		meta := map[string]any{"icon": icon(o.Type), "title": title(o)}
		var missing []any
		for _, ref := range o.References {
			if !present[ref.Type+"/"+ref.ID] {
				missing = append(missing, map[string]any{"type": ref.Type, "id": ref.ID})
			}
		}
		_, exists := k.objects[o.Type+"/"+o.ID]
		switch {
		case len(missing) > 0:
			errs = append(errs, map[string]any{"id": o.ID, "type": o.Type, "title": title(o),
				"meta": meta, "error": map[string]any{"type": "missing_references",
					"references": missing}})
		case exists && !overwrite:
			errs = append(errs, map[string]any{"id": o.ID, "type": o.Type, "title": title(o),
				"meta": meta, "error": map[string]any{"type": "conflict"}})
		default:
			res := map[string]any{"id": o.ID, "type": o.Type, "meta": meta}
			if exists {
				res["overwrite"] = true
			}
			ok = append(ok, res)
		}
	}
	if len(errs) == 0 {
		for _, o := range objs {
			k.objects[o.Type+"/"+o.ID] = o
		}
	}
	out := map[string]any{"success": len(errs) == 0, "successCount": len(ok)}
	if len(ok) > 0 {
		out["successResults"] = ok
	}
	if len(errs) > 0 {
		out["errors"] = errs
	}
	return out
}

func readNDJSON(r io.Reader) ([]SavedObject, error) {
	var out []SavedObject
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 10<<20)
	for sc.Scan() {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		var o SavedObject
		if err := json.Unmarshal(line, &o); err != nil {
			return nil, err
		}
		if o.Type == "" { // the export summary line
			continue
		}
		out = append(out, o)
	}
	return out, sc.Err()
}

func icon(typ string) string {
	switch typ {
	case "index-pattern":
		return "indexPatternApp"
	case "dashboard":
		return "dashboardApp"
	case "search":
		return "discoverApp"
	case "visualization", "lens":
		return "visualizeApp"
	}
	return typ
}

func title(o SavedObject) string {
	var a struct {
		Title string `json:"title"`
		Name  string `json:"name"`
	}
	_ = json.Unmarshal(o.Attributes, &a)
	if a.Title != "" {
		return a.Title
	}
	return a.Name
}

func kibanaError(w http.ResponseWriter, status int, text, msg string) {
	kibanaJSON(w, status, map[string]any{"statusCode": status, "error": text, "message": msg})
}

func kibanaJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
