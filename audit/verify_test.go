package audit

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// tamperJournal is a closed journal of five sessions, one segment, with
// checkpoints between them: a, b (checkpoint 1) c, d (checkpoint 2), and e
// left open at Close (the final checkpoint 3 names it open).
type tamperJournal struct {
	dir string
	ids map[string]string // a..e to session id
}

func buildTamperJournal(t *testing.T) tamperJournal {
	t.Helper()
	dir := t.TempDir()
	j, err := Open(dir, Options{Log: quietLog(), CheckpointInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	tj := tamperJournal{dir: dir, ids: map[string]string{}}
	session := func(name string, end bool) {
		r, err := j.Begin(startEvent("db", name+"@x"))
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			if _, err := r.Record(command(fmt.Sprintf("SELECT %d -- %s", i, name))); err != nil {
				t.Fatal(err)
			}
		}
		if end {
			if err := r.End(Event{Reason: ""}); err != nil {
				t.Fatal(err)
			}
		} else if err := r.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		tj.ids[name] = r.ID()
	}
	session("a", true)
	session("b", true)
	if err := j.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	session("c", true)
	session("d", true)
	if err := j.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	session("e", false)
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	return tj
}

// lines returns the journal's only segment as lines, without newlines.
func (tj tamperJournal) lines(t *testing.T) [][]byte {
	t.Helper()
	b, err := os.ReadFile(segmentPath(t, tj.dir, 0))
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Split(bytes.TrimSuffix(b, []byte("\n")), []byte("\n"))
}

func (tj tamperJournal) write(t *testing.T, lines [][]byte) {
	t.Helper()
	b := append(bytes.Join(lines, []byte("\n")), '\n')
	if err := os.WriteFile(segmentPath(t, tj.dir, 0), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// find returns the index of the line of session name's event seq.
func (tj tamperJournal) find(t *testing.T, lines [][]byte, name string, seq uint64) int {
	t.Helper()
	for i, l := range lines {
		if isCheckpointLine(l) || lineSession(l) != tj.ids[name] {
			continue
		}
		rec, err := parseRecord(l, true)
		if err != nil {
			t.Fatal(err)
		}
		var h struct{ Seq uint64 }
		json.Unmarshal(rec.Event, &h)
		if h.Seq == seq {
			return i
		}
	}
	t.Fatalf("no seq %d of session %s", seq, name)
	return -1
}

// checkpoints returns the indexes of the checkpoint lines.
func checkpointLines(lines [][]byte) []int {
	var out []int
	for i, l := range lines {
		if isCheckpointLine(l) {
			out = append(out, i)
		}
	}
	return out
}

// rehash recomputes the hash, and prev, of the session's records from line
// at on, as an insider who knows the format would.
func rehash(t *testing.T, lines [][]byte, session string, at int) {
	t.Helper()
	var prev [sha256.Size]byte
	started := false
	for i := range lines {
		l := lines[i]
		if isCheckpointLine(l) || lineSession(l) != session {
			continue
		}
		rec, err := parseRecord(l, true)
		if err != nil {
			t.Fatal(err)
		}
		if i < at {
			prev, _ = decodeHash(rec.Hash)
			continue
		}
		started = true
		line, hash := encodeRecord(prev, rec.Event)
		lines[i], prev = bytes.TrimSuffix(line, []byte("\n")), hash
	}
	if !started {
		t.Fatal("rehash: nothing after the line")
	}
}

func verifyDir(t *testing.T, dir string, opts VerifyOptions) *Report {
	t.Helper()
	rep, err := Verify(context.Background(), JournalSource(dir), opts)
	if err != nil {
		t.Fatalf("Verify: %v", err)
	}
	return rep
}

func hasProblem(rep *Report, kind, session string) bool {
	for _, p := range rep.Problems {
		if p.Kind == kind && !p.Warning && (session == "" || p.Session == session) {
			return true
		}
	}
	return false
}

func TestVerifyUntouchedJournalIsClean(t *testing.T) {
	tj := buildTamperJournal(t)
	key, err := LoadKey(tj.dir)
	if err != nil {
		t.Fatal(err)
	}
	rep := verifyDir(t, tj.dir, VerifyOptions{PublicKey: key.Public().(ed25519.PublicKey)})
	if !rep.OK() || rep.Sessions != 5 || rep.Records != 4*6+5 || rep.Checkpoints != 3 {
		t.Fatalf("untouched journal: %+v", rep)
	}
	// e was open when vigil stopped: a warning, not a failure.
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemSessionOpen ||
		rep.Problems[0].Session != tj.ids["e"] {
		t.Fatalf("problems: %+v", rep.Problems)
	}

	// The readers ignore checkpoints.
	ss, err := ReadSessions(tj.dir, Filter{})
	if err != nil || len(ss) != 5 {
		t.Fatalf("ReadSessions: %d sessions, %v", len(ss), err)
	}
	mustChain(t, tj.dir, tj.ids["a"], 6)

	// The next start ends e, and then nothing is left to warn about.
	j := openTest(t, tj.dir, Options{CheckpointInterval: -1})
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	evs, err := ReadSession(tj.dir, tj.ids["e"])
	if err != nil || evs[len(evs)-1].Reason != ReasonStopped {
		t.Fatalf("e after restart: %v %+v", err, evs[len(evs)-1])
	}
	if rep := verifyDir(t, tj.dir, VerifyOptions{}); len(rep.Problems) != 0 {
		t.Fatalf("after restart: %+v", rep.Problems)
	}
}

// TestVerifyCatchesTampering alters a closed journal as an insider with
// write access to its files would, and checks that Verify names each
// change.
func TestVerifyCatchesTampering(t *testing.T) {
	for _, tc := range []struct {
		name    string
		session string // the session the problem names; "" for checkpoints
		kind    string
		tamper  func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte
	}{
		{"edit a statement in place", "b", ProblemHashMismatch,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i := tj.find(t, lines, "b", 3)
				lines[i] = bytes.Replace(lines[i], []byte("SELECT 1"), []byte("SELECT 7"), 1)
				return lines
			}},
		{"edit a statement and re-hash it", "b", ProblemChainBroken,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i := tj.find(t, lines, "b", 3)
				lines[i] = bytes.Replace(lines[i], []byte("SELECT 1"), []byte("SELECT 7"), 1)
				rec, _ := parseRecord(lines[i], true)
				prev, _ := decodeHash(rec.Prev)
				line, _ := encodeRecord(prev, rec.Event)
				lines[i] = bytes.TrimSuffix(line, []byte("\n"))
				return lines
			}},
		{"edit a statement and re-hash the rest of the chain", "b", ProblemHeadMismatch,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i := tj.find(t, lines, "b", 3)
				lines[i] = bytes.Replace(lines[i], []byte("SELECT 1"), []byte("SELECT 7"), 1)
				rehash(t, lines, tj.ids["b"], i)
				return lines
			}},
		{"delete an event", "c", ProblemSeqGap,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i := tj.find(t, lines, "c", 2)
				return slices.Delete(lines, i, i+1)
			}},
		{"reorder two events", "a", ProblemReordered,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i, k := tj.find(t, lines, "a", 2), tj.find(t, lines, "a", 3)
				lines[i], lines[k] = lines[k], lines[i]
				return lines
			}},
		{"truncate a session", "c", ProblemMissingTail,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i := tj.find(t, lines, "c", 5) // the last command and the end
				return slices.Delete(lines, i, i+2)
			}},
		{"truncate the open session", "e", ProblemMissingTail,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i := tj.find(t, lines, "e", 5)
				return slices.Delete(lines, i, i+1)
			}},
		{"drop a whole session", "d", ProblemMissingSession,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				return slices.DeleteFunc(lines, func(l []byte) bool {
					return !isCheckpointLine(l) && lineSession(l) == tj.ids["d"]
				})
			}},
		{"forge a checkpoint's heads", "", ProblemBadSignature,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i := checkpointLines(lines)[1]
				lines[i] = bytes.Replace(lines[i], []byte(`"seq":6,`), []byte(`"seq":5,`), 1)
				return lines
			}},
		{"replace a checkpoint with one signed by another key", "", ProblemBadSignature,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				i := checkpointLines(lines)[1]
				cp, err := parseCheckpoint(lines[i])
				if err != nil {
					t.Fatal(err)
				}
				pub, priv, _ := ed25519.GenerateKey(rand.Reader)
				raw := bytes.Replace(cp.Raw, []byte(cp.Key),
					[]byte(base64.StdEncoding.EncodeToString(pub)), 1)
				sig := base64.StdEncoding.EncodeToString(ed25519.Sign(priv, raw))
				lines[i] = fmt.Appendf(nil, `{"checkpoint":%s,"sig":"%s"}`, raw, sig)
				return lines
			}},
		{"delete the last checkpoint", "", ProblemMissingCheckpoint,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				cps := checkpointLines(lines)
				return slices.Delete(lines, cps[2], cps[2]+1)
			}},
		{"delete a checkpoint in the middle", "", ProblemCheckpointChain,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				cps := checkpointLines(lines)
				return slices.Delete(lines, cps[1], cps[1]+1)
			}},
		{"insert a made-up session before a checkpoint", "x", ProblemNotCovered,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				return slices.Insert(lines, checkpointLines(lines)[0], forgedSession(t, tj)...)
			}},
		{"append a made-up session after the final checkpoint", "x", ProblemNotCovered,
			func(t *testing.T, tj tamperJournal, lines [][]byte) [][]byte {
				return append(lines, forgedSession(t, tj)...)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tj := buildTamperJournal(t)
			tj.write(t, tc.tamper(t, tj, tj.lines(t)))
			rep := verifyDir(t, tj.dir, VerifyOptions{})
			session := tj.ids[tc.session]
			if tc.session == "x" {
				session = forgedID
			}
			t.Log(dumpProblems(rep))
			if rep.OK() || !hasProblem(rep, tc.kind, session) {
				t.Fatalf("want a %s problem on session %q; report: %s", tc.kind, session,
					dumpProblems(rep))
			}
		})
	}
}

const forgedID = "01900000-0000-7000-8000-000000000000"

// forgedSession returns the lines of a whole, correctly chained session
// that vigil never wrote.
func forgedSession(t *testing.T, tj tamperJournal) [][]byte {
	t.Helper()
	var out [][]byte
	var prev [sha256.Size]byte
	for seq, kind := range []Kind{KindSessionStart, KindCommand, KindSessionEnd} {
		ev := startEvent("db", "ghost@x")
		ev.SessionID, ev.Seq, ev.Kind = forgedID, uint64(seq+1), kind
		b, err := json.Marshal(ev)
		if err != nil {
			t.Fatal(err)
		}
		line, hash := encodeRecord(prev, b)
		out, prev = append(out, bytes.TrimSuffix(line, []byte("\n"))), hash
	}
	return out
}

func dumpProblems(rep *Report) string {
	var b strings.Builder
	for _, p := range rep.Problems {
		fmt.Fprintf(&b, "\n  %s %d %s warning=%v: %s", p.Session, p.Seq, p.Kind, p.Warning,
			p.Detail)
	}
	return b.String()
}

func TestVerifyChecksTheGivenKey(t *testing.T) {
	tj := buildTamperJournal(t)
	other, _, _ := ed25519.GenerateKey(rand.Reader)
	rep := verifyDir(t, tj.dir, VerifyOptions{PublicKey: other})
	if !hasProblem(rep, ProblemBadSignature, "") {
		t.Fatalf("checkpoints verified against another key: %s", dumpProblems(rep))
	}
}

func TestVerifyLiveAndCrashedJournal(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{CheckpointInterval: -1, MaxSegmentSize: 2 << 10})
	r, err := j.Begin(startEvent("db", "a@x"))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 30 { // several segments
		if _, err := r.Record(command(fmt.Sprintf("SELECT %d", i))); err != nil {
			t.Fatal(err)
		}
		if err := r.Sync(context.Background()); err != nil {
			t.Fatal(err)
		}
		if i == 10 {
			if err := j.Checkpoint(); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := r.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n, _ := listSegments(dir); len(n) < 3 {
		t.Fatalf("%d segments, want several", len(n))
	}

	// Live: the open session, and its events after the newest checkpoint,
	// are no problem.
	rep := verifyDir(t, dir, VerifyOptions{})
	if !rep.OK() || len(rep.Problems) != 1 || rep.Problems[0].Kind != ProblemSessionOpen {
		t.Fatalf("live journal: %s", dumpProblems(rep))
	}

	// A copy of the files is what a crash leaves: no writer, no final
	// checkpoint.
	crashed := t.TempDir()
	copyJournal(t, dir, crashed)
	rep = verifyDir(t, crashed, VerifyOptions{})
	if !hasProblem(rep, ProblemMissingCheckpoint, "") {
		t.Fatalf("crashed journal: %s", dumpProblems(rep))
	}
	for _, p := range rep.Problems {
		if p.Session != "" && !p.Warning {
			t.Fatalf("crashed journal: a session problem that is not a warning: %+v", p)
		}
	}

	// Starting again ends the session, naming the crash; then all is clean.
	j2 := openTest(t, crashed, Options{CheckpointInterval: -1})
	if d := j2.Dangling(); len(d) != 1 || d[0] != r.ID() {
		t.Errorf("Dangling() = %v; want the crashed session %s", d, r.ID())
	}
	if err := j2.Close(); err != nil {
		t.Fatal(err)
	}
	evs, err := ReadSession(crashed, r.ID())
	if err != nil {
		t.Fatal(err)
	}
	if end := evs[len(evs)-1]; end.Kind != KindSessionEnd || end.Reason != ReasonCrash ||
		end.Session.Events != 32 || end.Identity.Principal() != "a@x" {
		t.Fatalf("recovered end: %+v", end)
	}
	if rep := verifyDir(t, crashed, VerifyOptions{}); !onlyRecovered(rep) {
		t.Fatalf("after recovery: %s", dumpProblems(rep))
	}
}

func copyJournal(t *testing.T, from, to string) {
	t.Helper()
	ents, err := os.ReadDir(from)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.Name() == "journal.lock" {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCheckpointKeyFile(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, Options{CheckpointInterval: -1})
	j.Close()
	st, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("key file mode %v, want 0600", st.Mode().Perm())
	}
	k1, err := LoadKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	j = openTest(t, dir, Options{CheckpointInterval: -1})
	j.Close()
	k2, _ := LoadKey(dir)
	if !k1.Equal(k2) {
		t.Fatal("the second Open replaced the key")
	}
	pemPub, err := PublicKeyPEM(k1.Public().(ed25519.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	for _, in := range [][]byte{pemPub,
		[]byte(base64.StdEncoding.EncodeToString(k1.Public().(ed25519.PublicKey)) + "\n")} {
		pub, err := ParsePublicKey(in)
		if err != nil || !pub.Equal(k1.Public()) {
			t.Fatalf("ParsePublicKey(%q): %v", in, err)
		}
	}
	// Every checkpoint chains to the one before, across restarts.
	cps, err := JournalSource(dir).Checkpoints(context.Background())
	if err != nil || len(cps) != 2 || cps[1].Seq != 2 || !cps[1].Final {
		t.Fatalf("checkpoints: %+v %v", cps, err)
	}
	if h := sha256.Sum256(cps[0].Raw); cps[1].Prev != hex.EncodeToString(h[:]) {
		t.Fatal("checkpoint 2 does not chain to checkpoint 1")
	}
}

// TestVerifyOnlyExpectedConnections: a store that holds some connections'
// sessions (Elasticsearch holds those with export: siem) is not blamed for
// the others, and still is for its own.
func TestVerifyOnlyExpectedConnections(t *testing.T) {
	tj := buildTamperJournal(t)
	var kept [][]byte
	for _, l := range tj.lines(t) {
		if bytes.Contains(l, []byte(tj.ids["c"])) && !bytes.HasPrefix(l, []byte(`{"checkpoint"`)) {
			continue
		}
		kept = append(kept, l)
	}
	tj.write(t, kept)
	if rep := verifyDir(t, tj.dir, VerifyOptions{Connections: []string{"other"}}); hasProblem(
		rep, ProblemMissingSession, tj.ids["c"]) {
		t.Errorf("session c of connection db reported missing where only connection other "+
			"is expected:\n%s", dumpProblems(rep))
	}
	if rep := verifyDir(t, tj.dir, VerifyOptions{Connections: []string{"db"}}); !hasProblem(
		rep, ProblemMissingSession, tj.ids["c"]) {
		t.Errorf("session c of connection db dropped, not reported:\n%s", dumpProblems(rep))
	}
}

// onlyRecovered reports whether rep holds exactly one problem: the
// recovered warning a start after a crash leaves.
func onlyRecovered(rep *Report) bool {
	return len(rep.Problems) == 1 && rep.Problems[0].Kind == ProblemRecovered &&
		rep.Problems[0].Warning && rep.OK()
}

// TestTailRemovalReportedAfterRestart: removing the journal's tail, with
// its final checkpoint, and starting vigil on it looks like a crash to
// Open; verify still reports the start as a recovery.
func TestTailRemovalReportedAfterRestart(t *testing.T) {
	tj := buildTamperJournal(t)
	lines := tj.lines(t)
	cps := checkpointLines(lines)
	tj.write(t, lines[:cps[len(cps)-2]+1]) // up to the second-to-last checkpoint
	j := openTest(t, tj.dir, Options{CheckpointInterval: -1})
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	rep := verifyDir(t, tj.dir, VerifyOptions{})
	found := false
	for _, p := range rep.Problems {
		found = found || p.Kind == ProblemRecovered
	}
	if !found {
		t.Fatalf("a start on a journal with its tail removed is not reported:\n%s",
			dumpProblems(rep))
	}
	// A clean stop and start is not a recovery.
	j = openTest(t, tj.dir, Options{CheckpointInterval: -1})
	if err := j.Close(); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, p := range verifyDir(t, tj.dir, VerifyOptions{}).Problems {
		if p.Kind == ProblemRecovered {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d recovered warnings after a clean restart; want still 1", n)
	}
}
