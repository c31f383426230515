package fleet

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/bpfstats/tracker/internal/publish"
)

// The faster decoder reads every message as encoding/json does, hostile
// ones included: same value, or an error from both.
func TestUnmarshalAsEncodingJSON(t *testing.T) {
	detail, s := simNode(t, "n", 3, time.Now(), simShape{gadgets: 2, programs: 2, unowned: 2})
	bodies := [][]byte{s.data, detail[0].data, detail[len(detail)-1].data,
		[]byte(`{"schema":"bpfstats/v1","type":"summary","gadgets":[{"gadget":{"name":"\xff\xfe"}}]}`),
		[]byte(`{"schema":"bpfstats/v1","type":"summary","seq":1,"seq":2}`),
		[]byte(`{"seq":-1}`),
		[]byte(`{"time":"yesterday"}`),
		[]byte(`{"gadgets":{}}`),
		[]byte(`{"gadgets":[1,2]}`),
		[]byte(`{"unowned":{"cpuPercent":1e999}}`),
		[]byte(`{"nodeName":"\u0000\ud800"}`),
		[]byte(`{"gadgets":[`),
		[]byte(`[]`), []byte(`null`), []byte(``), []byte(`{} trailing`),
	}
	for _, body := range bodies {
		var want, got publish.SummaryMessage
		wantErr := json.Unmarshal(body, &want)
		gotErr := unmarshal(body, &got)
		if (wantErr == nil) != (gotErr == nil) || wantErr == nil && !reflect.DeepEqual(got, want) {
			t.Errorf("%.80q: encoding/json %v %+v\nfast decoder %v %+v", body, wantErr, want, gotErr, got)
		}
	}
}

// Where the faster decoder differs, it is stricter or the value was never
// trustworthy: keys in another case are not matched (encoding/json
// matches them), so the message is refused; a number beyond its field
// does not fail the message (a publisher can send any seq anyway).
func TestUnmarshalDifferences(t *testing.T) {
	f := New("", time.Second, nil)
	if _, err := f.decode(publish.TokenSummary, []byte(`{"SCHEMA":"bpfstats/v1","TYPE":"summary"}`)); err == nil {
		t.Error("keys in another case taken")
	}
	var m publish.SummaryMessage
	if err := unmarshal([]byte(`{"seq":18446744073709551616}`), &m); err != nil && m.Seq != 0 {
		t.Errorf("overflowing seq: %v %d", err, m.Seq)
	}
}
