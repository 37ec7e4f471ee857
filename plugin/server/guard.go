package server

import (
	"crypto/subtle"
	"errors"
	"fmt"
	"mime"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
)

// The daemon is reachable by every web page its user opens, so every
// request is checked before it reaches a route: its Host header must name
// this daemon (a DNS-rebinding page sends its own name), a configured
// token must be presented, and a browser's cross-site request may not
// change state.

// guard wraps the whole mux: the Host check on every route (the websocket
// and /metrics included), then the token on every route but the probes.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := s.checkHost(r.Host); err != nil {
			s.metrics.refused.WithLabelValues("host").Inc()
			writeError(w, http.StatusForbidden, err)
			return
		}
		if s.cfg.Token != "" && !tokenFree(r) && !s.tokenOK(r) {
			s.metrics.refused.WithLabelValues("token").Inc()
			w.Header().Set("WWW-Authenticate", `Bearer realm="m3gate"`)
			writeError(w, http.StatusUnauthorized, errors.New("missing or wrong bearer token: send Authorization: Bearer <daemon.token> (the node pack and m3gate run read $M3GATE_DAEMON_TOKEN)"))
			return
		}
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			if err := s.checkOrigin(r); err != nil {
				s.metrics.refused.WithLabelValues("origin").Inc()
				writeError(w, http.StatusForbidden, err)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// tokenFree reports whether r needs no token: the probes, and the review
// page's shell (/ and /ui/…, no data; the page then asks its user for the
// token and sends it on every data request).
func tokenFree(r *http.Request) bool {
	if r.URL.Path == "/healthz" || r.URL.Path == "/readyz" {
		return true
	}
	return (r.Method == http.MethodGet || r.Method == http.MethodHead) && pagePublic(r.URL.Path)
}

// tokenOK compares the bearer token in constant time. A browser's
// websocket cannot send Authorization; it offers the token as the
// subprotocol "bearer.<base64url>" (see subprotocolToken).
func (s *Server) tokenOK(r *http.Request) bool {
	got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
	if !ok {
		if got, ok = subprotocolToken(r); !ok {
			return false
		}
	}
	return subtle.ConstantTimeCompare([]byte(strings.TrimSpace(got)), []byte(s.cfg.Token)) == 1
}

// checkHost accepts a Host header that is an IP address, localhost (or a
// name under .localhost), the listen host, or one of Config.AllowedHosts.
// IP addresses are safe: a rebinding page can only send its own name.
func (s *Server) checkHost(hostport string) error {
	host := hostport
	if h, _, err := net.SplitHostPort(hostport); err == nil {
		host = h
	}
	host = strings.ToLower(strings.TrimSuffix(strings.Trim(host, "[]"), "."))
	switch {
	case host == "":
		return errors.New("request has no Host header")
	case net.ParseIP(host) != nil, host == "localhost", strings.HasSuffix(host, ".localhost"):
		return nil
	case host == strings.ToLower(s.cfg.ListenHost), slices.Contains(s.allowedHosts, host):
		return nil
	}
	return fmt.Errorf("host %q is not this daemon's name: add it to daemon.allowed_hosts if the daemon is meant to be reached by that name", host)
}

// checkOrigin lets through requests without Origin (not from a browser
// page: the node pack, m3gate run, curl), same-origin requests, and the
// origins of Config.AllowedOrigins. A cross-site page is refused.
func (s *Server) checkOrigin(r *http.Request) error {
	o := r.Header.Get("Origin")
	if o == "" || s.originAllowed(o, r.Host) {
		return nil
	}
	return fmt.Errorf("origin %q may not call the daemon: add it to daemon.allowed_origins to allow that web page", o)
}

func (s *Server) originAllowed(origin, host string) bool {
	if slices.Contains(s.allowedOrigins, strings.TrimSuffix(strings.ToLower(origin), "/")) {
		return true
	}
	u, err := url.Parse(origin)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") {
		return false // including the opaque "null" origin
	}
	return strings.EqualFold(u.Host, host)
}

// requireContentType refuses a body whose media type is not one of want:
// a web page can send text/plain without a preflight, never
// application/json.
func requireContentType(r *http.Request, want ...string) error {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if slices.Contains(want, ct) {
		return nil
	}
	if ct == "" {
		return fmt.Errorf("no Content-Type: send %s", strings.Join(want, " or "))
	}
	return fmt.Errorf("unsupported content type %q: send %s", ct, strings.Join(want, " or "))
}
