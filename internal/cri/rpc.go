package cri

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
)

// rpcClient makes gRPC unary calls to the CRI runtime service over HTTP/2
// without TLS ("prior knowledge", as gRPC clients talk on unix sockets),
// with the standard library's HTTP/2 client: one connection, made by the
// first call and made again after the runtime restarts.
type rpcClient struct {
	transport *http.Transport
	client    *http.Client
}

// rpcMaxResponse bounds a response, as gRPC's default receive limit does.
const rpcMaxResponse = 4 << 20

// gRPC status codes the Resolver tells apart (google.golang.org/grpc/codes).
const (
	codeOK               = 0
	codeCanceled         = 1
	codeDeadlineExceeded = 4
	codeNotFound         = 5
)

// rpcError is a call the runtime answered with a gRPC status other than
// OK.
type rpcError struct {
	method  string
	code    int
	message string
}

func (e *rpcError) Error() string {
	return fmt.Sprintf("%s: rpc error: code = %d desc = %s", e.method, e.code, e.message)
}

// Unwrap makes a runtime's Canceled and DeadlineExceeded answers (its
// side of the call's context, from the grpc-timeout it was sent) match
// context.Canceled and context.DeadlineExceeded.
func (e *rpcError) Unwrap() error {
	switch e.code {
	case codeCanceled:
		return context.Canceled
	case codeDeadlineExceeded:
		return context.DeadlineExceeded
	}
	return nil
}

// isNotFound reports whether err is a NotFound answer of the runtime.
func isNotFound(err error) bool {
	var re *rpcError
	return errors.As(err, &re) && re.code == codeNotFound
}

func newRPCClient(socket string) *rpcClient {
	var d net.Dialer
	t := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", socket)
		},
		Protocols: new(http.Protocols),
	}
	t.Protocols.SetUnencryptedHTTP2(true)
	return &rpcClient{transport: t, client: &http.Client{Transport: t}}
}

// close drops the connection.
func (c *rpcClient) close() { c.transport.CloseIdleConnections() }

// call sends req, an encoded request message, to method of
// runtime.v1.RuntimeService and returns the encoded response message.
func (c *rpcClient) call(ctx context.Context, method string, req []byte) ([]byte, error) {
	full := "/runtime.v1.RuntimeService/" + method
	// One length-prefixed message: not compressed, big-endian length.
	body := make([]byte, 5, 5+len(req))
	binary.BigEndian.PutUint32(body[1:], uint32(len(req)))
	body = append(body, req...)
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://localhost"+full, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", full, err)
	}
	hreq.Header.Set("Content-Type", "application/grpc")
	// No grpc-timeout: the runtime sees the stream reset when ctx ends,
	// and the error is then always ctx's.
	hreq.Header.Set("TE", "trailers")
	resp, err := c.client.Do(hreq)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			err = cerr
		}
		return nil, fmt.Errorf("%s: %w", full, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s: HTTP status %s", full, resp.Status)
	}
	// A call that fails before any message has its status in the headers
	// ("trailers-only"); otherwise it follows the message, in trailers.
	if err := rpcStatus(full, resp.Header); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(resp.Body, rpcMaxResponse+6))
	if err != nil {
		return nil, fmt.Errorf("%s: reading the response: %w", full, err)
	}
	if resp.Header.Get("Grpc-Status") == "" {
		if resp.Trailer.Get("Grpc-Status") == "" {
			return nil, fmt.Errorf("%s: response without a gRPC status", full)
		}
		if err := rpcStatus(full, resp.Trailer); err != nil {
			return nil, err
		}
	}
	return rpcMessage(full, data)
}

// rpcStatus returns the error of a grpc-status header other than OK
// (nil when absent or OK).
func rpcStatus(method string, h http.Header) error {
	s := h.Get("Grpc-Status")
	if s == "" {
		return nil
	}
	code, err := strconv.Atoi(s)
	if err != nil {
		return fmt.Errorf("%s: malformed grpc-status %q", method, s)
	}
	if code == codeOK {
		return nil
	}
	// grpc-message is percent-encoded.
	msg := h.Get("Grpc-Message")
	if m, err := url.PathUnescape(msg); err == nil {
		msg = m
	}
	return &rpcError{method: method, code: code, message: msg}
}

// rpcMessage returns the one message of a unary response body.
func rpcMessage(method string, data []byte) ([]byte, error) {
	if len(data) < 5 {
		return nil, fmt.Errorf("%s: response of %d bytes, no message", method, len(data))
	}
	if data[0] != 0 {
		return nil, fmt.Errorf("%s: compressed response (flag %d), not asked for", method, data[0])
	}
	size := binary.BigEndian.Uint32(data[1:5])
	if size > rpcMaxResponse || int(size) != len(data)-5 {
		return nil, fmt.Errorf("%s: response message of %d bytes in a body of %d", method, size, len(data))
	}
	return data[5:], nil
}
