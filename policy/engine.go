package policy

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
	lru "github.com/hashicorp/golang-lru/v2"
	"github.com/open-policy-agent/opa/v1/rego"
)

// Query is the document every policy must define: an object with allow,
// reasons, rules, mask and approval (README.md).
const Query = "data.vigil.decision"

// ErrUndefined is returned when the policy does not define data.vigil.decision
// for an input. Callers deny.
var ErrUndefined = errors.New("policy: data.vigil.decision is undefined")

// Option configures an Engine.
type Option func(*options)

type options struct {
	logger    *slog.Logger
	cacheSize int
	watch     bool
	debounce  time.Duration
	onReload  func(revision string, err error)
}

// WithLogger sets the logger for load and reload messages.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithCacheSize bounds the decision cache to n entries; 0 turns it off.
// The default is 10000.
func WithCacheSize(n int) Option { return func(o *options) { o.cacheSize = n } }

// WithoutWatch turns off reloading when the files change; Reload still
// works.
func WithoutWatch() Option { return func(o *options) { o.watch = false } }

// OnReload calls f after every reload attempt made by the watcher or by
// Reload, with the active revision, or with the error that kept the
// previous one active. f runs on the reloading goroutine and must not block.
func OnReload(f func(revision string, err error)) Option {
	return func(o *options) { o.onReload = f }
}

// Engine evaluates the policy bundle on commands. It is safe for concurrent
// use; a reload swaps the active bundle atomically, and decisions in flight
// finish on the bundle they started with.
type Engine struct {
	dir    string
	opts   options
	active atomic.Pointer[compiled]
	mu     sync.Mutex // serialises reloads

	watcher *fsnotify.Watcher
	done    chan struct{}
	stopped sync.WaitGroup
}

// compiled is one loaded bundle with its prepared query and cache.
type compiled struct {
	query    rego.PreparedEvalQuery
	revision string
	keyer    *keyer
	cache    *lru.Cache[[32]byte, *Decision] // nil when off
}

// New loads the *.rego files (tests excluded) and data.json files under dir
// and prepares data.vigil.decision. With dir empty it loads the embedded
// default bundle (Bundle) and does not watch. Otherwise it watches dir and
// reloads when files change until Close; a bundle that fails to parse or
// compile is refused with a Warn log naming file and line, and the previous
// one keeps deciding. An empty or unreadable dir, or a broken bundle at
// start, is an error.
func New(ctx context.Context, dir string, opts ...Option) (*Engine, error) {
	o := options{logger: slog.Default(), cacheSize: 10000, watch: dir != "",
		debounce: 100 * time.Millisecond}
	for _, f := range opts {
		f(&o)
	}
	e := &Engine{dir: dir, opts: o, done: make(chan struct{})}
	if dir != "" {
		if st, err := os.Stat(dir); err != nil {
			return nil, fmt.Errorf("policy: %w", err)
		} else if !st.IsDir() {
			return nil, fmt.Errorf("policy: %s is not a directory", dir)
		}
	}
	c, err := e.load(ctx)
	if err != nil {
		return nil, err
	}
	e.active.Store(c)
	e.opts.logger.Info("policy loaded", "dir", e.display(), "revision", c.revision)
	if o.watch {
		if err := e.startWatch(); err != nil {
			return nil, err
		}
	}
	return e, nil
}

func (e *Engine) display() string {
	if e.dir == "" {
		return "(embedded bundle)"
	}
	return e.dir
}

// load reads, compiles and prepares the bundle.
func (e *Engine) load(ctx context.Context) (*compiled, error) {
	fsys, display := openBundle(e.dir)
	src, err := readBundle(fsys, display, false)
	if err != nil {
		return nil, err
	}
	comp, err := src.compile()
	if err != nil {
		return nil, err
	}
	q, err := rego.New(rego.Query(Query), rego.Compiler(comp), rego.Store(src.store())).
		PrepareForEval(ctx)
	if err != nil {
		return nil, fmt.Errorf("policy: prepare %s: %w", Query, err)
	}
	c := &compiled{query: q, revision: src.revision, keyer: newKeyer(comp)}
	if e.opts.cacheSize > 0 && !c.keyer.volatile {
		c.cache, _ = lru.New[[32]byte, *Decision](e.opts.cacheSize)
	}
	return c, nil
}

// Reload loads the bundle again now. On error the active bundle stays and
// the error is returned (and logged at Warn with file and line).
func (e *Engine) Reload(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, err := e.load(ctx)
	if err != nil {
		file, line := location(err)
		e.opts.logger.Warn("policy rejected, previous policy stays active",
			"dir", e.display(), "file", file, "line", line,
			"active_revision", e.Revision(), "err", err)
		e.notify("", err)
		return err
	}
	if old := e.active.Load(); old == nil || old.revision != c.revision {
		e.active.Store(c)
		e.opts.logger.Info("policy reloaded", "dir", e.display(), "revision", c.revision)
	}
	e.notify(e.Revision(), nil)
	return nil
}

func (e *Engine) notify(rev string, err error) {
	if e.opts.onReload != nil {
		e.opts.onReload(rev, err)
	}
}

// Revision returns the content hash of the active bundle: 16 hex digits of
// SHA-256 over its Rego modules (tests excluded) and data files.
func (e *Engine) Revision() string {
	if c := e.active.Load(); c != nil {
		return c.revision
	}
	return ""
}

// Decide evaluates data.vigil.decision on in. It fails closed: an
// evaluation error, an undefined decision or one of the wrong shape is
// returned as an error and the caller must deny. The returned Decision may
// be shared with other callers through the cache and must not be modified.
func (e *Engine) Decide(ctx context.Context, in *Input) (*Decision, error) {
	if in == nil {
		return nil, errors.New("policy: Decide without input")
	}
	c := e.active.Load()
	var key [32]byte
	if c.cache != nil {
		var err error
		if key, err = c.keyer.key(in); err != nil {
			return nil, err
		}
		if d, ok := c.cache.Get(key); ok {
			return d, nil
		}
	}

	rs, err := c.query.Eval(ctx, rego.EvalInput(in))
	if err != nil {
		return nil, fmt.Errorf("policy: evaluate: %w", err)
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, ErrUndefined
	}
	d, err := decode(rs[0].Expressions[0].Value)
	if err != nil {
		return nil, err
	}
	d.Revision = c.revision

	if c.cache != nil {
		c.cache.Add(key, d)
	}
	return d, nil
}

// Close stops the watcher. Decide keeps working on the last bundle.
func (e *Engine) Close() error {
	if e.watcher == nil {
		return nil
	}
	select {
	case <-e.done:
		return nil
	default:
	}
	close(e.done)
	err := e.watcher.Close()
	e.stopped.Wait()
	if err != nil {
		return fmt.Errorf("policy: close watcher: %w", err)
	}
	return nil
}

// startWatch watches dir and its subdirectories.
func (e *Engine) startWatch() error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("policy: watch %s: %w", e.dir, err)
	}
	err = filepath.WalkDir(e.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		return w.Add(p)
	})
	if err != nil {
		w.Close()
		return fmt.Errorf("policy: watch %s: %w", e.dir, err)
	}
	e.watcher = w
	e.stopped.Add(1)
	go e.watch()
	return nil
}

// watch reloads once the files have been quiet for the debounce interval, so
// that an editor's write-rename sequence yields one reload.
func (e *Engine) watch() {
	defer e.stopped.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		select {
		case <-e.done:
			timer.Stop()
			return
		case ev, ok := <-e.watcher.Events:
			if !ok {
				return
			}
			if ev.Has(fsnotify.Create) {
				if st, err := os.Stat(ev.Name); err == nil && st.IsDir() {
					_ = e.watcher.Add(ev.Name)
				}
			}
			timer.Reset(e.opts.debounce)
		case err, ok := <-e.watcher.Errors:
			if !ok {
				return
			}
			e.opts.logger.Warn("policy watcher error", "dir", e.dir, "err", err)
		case <-timer.C:
			_ = e.Reload(context.Background())
		}
	}
}
