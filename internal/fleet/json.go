package fleet

import "encoding/json"

// unmarshal decodes one message body.
func unmarshal(data []byte, v any) error {
	return json.Unmarshal(data, v)
}
