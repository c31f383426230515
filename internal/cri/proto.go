package cri

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// The few CRI messages the Resolver sends and reads, encoded and decoded
// by hand in the protobuf wire format: field numbers from
// k8s.io/cri-api/pkg/apis/runtime/v1/api.proto (runtime.v1). Linking the
// generated types and gRPC cost every command of the tracker about 9 ms
// of start-up (package initialisation), for three calls.

// Protobuf wire types.
const (
	wireVarint = 0
	wireI64    = 1
	wireBytes  = 2
	wireI32    = 5
)

// appendBytesField appends field num of wire type bytes (a string or an
// embedded message) holding v.
func appendBytesField(b []byte, num int, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(num)<<3|wireBytes)
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

// errTruncated is a message cut short or with a malformed field.
var errTruncated = errors.New("malformed protobuf message")

// walkFields calls fn for each field of msg with its number and, for the
// bytes wire type, its value; fields of other types are skipped. Unknown
// fields are thus ignored, as protobuf requires.
func walkFields(msg []byte, fn func(num int, v []byte) error) error {
	for len(msg) > 0 {
		key, n := binary.Uvarint(msg)
		if n <= 0 {
			return errTruncated
		}
		msg = msg[n:]
		num := int(key >> 3)
		switch key & 7 {
		case wireVarint:
			if _, n = binary.Uvarint(msg); n <= 0 {
				return errTruncated
			}
			msg = msg[n:]
		case wireI64, wireI32:
			size := 8
			if key&7 == wireI32 {
				size = 4
			}
			if len(msg) < size {
				return errTruncated
			}
			msg = msg[size:]
		case wireBytes:
			size, n := binary.Uvarint(msg)
			if n <= 0 || size > uint64(len(msg)-n) {
				return errTruncated
			}
			v := msg[n : n+int(size)]
			msg = msg[n+int(size):]
			if err := fn(num, v); err != nil {
				return err
			}
		default:
			return fmt.Errorf("%w: wire type %d", errTruncated, key&7)
		}
	}
	return nil
}

// listContainersRequest is a ListContainersRequest whose filter (field 1,
// a ContainerFilter) asks for the container id (its field 1).
func listContainersRequest(id string) []byte {
	return appendBytesField(nil, 1, appendBytesField(nil, 1, []byte(id)))
}

// podSandboxStatusRequest is a PodSandboxStatusRequest for pod_sandbox_id
// (field 1).
func podSandboxStatusRequest(id string) []byte {
	return appendBytesField(nil, 1, []byte(id))
}

// container is what the Resolver reads of a runtime.v1.Container.
type container struct {
	id, podSandboxID string
	labels           map[string]string
}

// decodeListContainers returns the containers (field 1) of a
// ListContainersResponse: id (1), pod_sandbox_id (2), labels (8).
func decodeListContainers(msg []byte) ([]container, error) {
	var out []container
	err := walkFields(msg, func(num int, v []byte) error {
		if num != 1 {
			return nil
		}
		var c container
		err := walkFields(v, func(num int, v []byte) error {
			switch num {
			case 1:
				c.id = string(v)
			case 2:
				c.podSandboxID = string(v)
			case 8:
				return decodeMapEntry(v, &c.labels)
			}
			return nil
		})
		out = append(out, c)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("decoding ListContainersResponse: %w", err)
	}
	return out, nil
}

// sandbox is what the Resolver reads of a runtime.v1.PodSandboxStatus:
// its metadata's name (1), uid (2) and namespace (3), and its labels.
type sandbox struct {
	meta   Pod
	labels map[string]string
}

// decodePodSandboxStatus returns the status (field 1) of a
// PodSandboxStatusResponse: metadata (2), labels (7).
func decodePodSandboxStatus(msg []byte) (sandbox, error) {
	var s sandbox
	err := walkFields(msg, func(num int, v []byte) error {
		if num != 1 {
			return nil
		}
		return walkFields(v, func(num int, v []byte) error {
			switch num {
			case 2:
				return walkFields(v, func(num int, v []byte) error {
					switch num {
					case 1:
						s.meta.Name = string(v)
					case 2:
						s.meta.UID = string(v)
					case 3:
						s.meta.Namespace = string(v)
					}
					return nil
				})
			case 7:
				return decodeMapEntry(v, &s.labels)
			}
			return nil
		})
	})
	if err != nil {
		return sandbox{}, fmt.Errorf("decoding PodSandboxStatusResponse: %w", err)
	}
	return s, nil
}

// decodeVersion returns runtime_name (2) and runtime_version (3) of a
// VersionResponse.
func decodeVersion(msg []byte) (name, version string, err error) {
	if name, version, err = stringPair(msg, 2, 3); err != nil {
		return "", "", fmt.Errorf("decoding VersionResponse: %w", err)
	}
	return name, version, nil
}

// decodeMapEntry adds one map<string, string> entry (key 1, value 2) to
// *m, allocated on first use.
func decodeMapEntry(entry []byte, m *map[string]string) error {
	k, v, err := stringPair(entry, 1, 2)
	if err != nil {
		return err
	}
	if *m == nil {
		*m = make(map[string]string)
	}
	(*m)[k] = v
	return nil
}

// stringPair returns the string fields a and b of msg ("" when absent).
func stringPair(msg []byte, a, b int) (va, vb string, err error) {
	err = walkFields(msg, func(num int, v []byte) error {
		switch num {
		case a:
			va = string(v)
		case b:
			vb = string(v)
		}
		return nil
	})
	return va, vb, err
}
