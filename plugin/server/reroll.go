package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"

	"github.com/m3gate/m3gate/nodes"
	"github.com/m3gate/m3gate/schemas/api"
)

// Requeuer queues a prompt on a ComfyUI server (POST /prompt). The daemon
// wires it to the plugin/comfyui client.
type Requeuer interface {
	// Requeue queues prompt (API format: node id -> {class_type, inputs})
	// on the ComfyUI server at base URL server, with
	// extra_data.extra_pnginfo = extraPNGInfo (a JSON object), for the
	// websocket client clientID, and returns ComfyUI's prompt id.
	Requeue(ctx context.Context, server string, prompt, extraPNGInfo json.RawMessage, clientID string) (promptID string, err error)
}

// maxRerollBody bounds a reroll body (a ComfyUI prompt with its UI
// workflow).
const maxRerollBody = 16 << 20

// reroll serves POST /v1/reroll with the node pack's contract
// (api.RerollRequest → api.RerollResponse): it plans the next attempt
// with nodes.PlanReroll (new seeds, attempt bumped) and queues it through
// the Requeuer on the ComfyUI server that ran the prompt (the request's
// comfyui_url), or on the first of Config.ComfyUIServers when the pack sent
// none. An attempt that reached max_tries is refused with 409.
func (s *Server) reroll(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Requeuer == nil {
		writeError(w, http.StatusNotImplemented, errors.New("reroll: no ComfyUI connection configured"))
		return
	}
	if err := requireContentType(r, "application/json"); err != nil {
		writeError(w, http.StatusUnsupportedMediaType, fmt.Errorf("reroll: %w", err))
		return
	}
	release, code, err := s.admitBody(w, r, maxRerollBody)
	if err != nil {
		s.refuseBody(w, code, fmt.Errorf("reroll: %w", err))
		return
	}
	defer release()
	var in api.RerollRequest
	dec := json.NewDecoder(r.Body)
	err = dec.Decode(&in)
	if err == nil {
		if _, terr := dec.Token(); terr != io.EOF {
			err = errors.New("data after the JSON object")
			if _, ok := bodyErrorStatus(terr); ok {
				err = terr
			}
		}
	}
	if err != nil {
		if code, ok := bodyErrorStatus(err); ok {
			s.refuseBody(w, code, fmt.Errorf("reroll: request body: %w", err))
			return
		}
		writeError(w, http.StatusBadRequest, fmt.Errorf("reroll: decode body: %w", err))
		return
	}
	bodyDone(w)
	if in.Attempt >= in.MaxTries && in.MaxTries > 0 {
		writeError(w, http.StatusConflict, fmt.Errorf("reroll: attempt %d already reached max_tries %d; not re-queued", in.Attempt, in.MaxTries))
		return
	}
	target, setting, code, err := s.rerollTarget(r, in.ComfyUIURL)
	if err != nil {
		writeError(w, code, err)
		return
	}
	plan, err := nodes.PlanReroll(in, s.cfg.SeedFunc)
	if err != nil {
		writeError(w, http.StatusBadRequest, err)
		return
	}
	id, err := s.cfg.Requeuer.Requeue(r.Context(), target, plan.Prompt, plan.ExtraPNGInfo, in.ClientID)
	if err != nil {
		writeError(w, http.StatusBadGateway, fmt.Errorf("reroll: queue on ComfyUI at %s (%s): %w", target, setting, err))
		return
	}
	s.log.Info("rerolled", "prompt_id", id, "server", target, "attempt", plan.Attempt, "seeds", fmt.Sprint(plan.Seeds))
	s.hub.publish(api.Event{Type: api.EventReroll, Data: api.RerollEvent{PromptID: id, Attempt: plan.Attempt, MaxTries: in.MaxTries, Seeds: plan.Seeds}})
	writeJSON(w, http.StatusOK, api.RerollResponse{Queued: true, PromptID: id, Attempt: plan.Attempt, Seeds: plan.Seeds, Server: target})
}

// Where the two sources of a reroll target come from, for error messages.
const (
	settingPackURL  = "comfyui_url, the address the node pack sent; set M3GATE_COMFYUI_URL in ComfyUI's environment when the daemon reaches ComfyUI at another address"
	settingFallback = "comfyui.servers[0] of the daemon's config; the node pack sent no comfyui_url"
)

// rerollTarget picks the ComfyUI server a reroll is queued on. The pack's
// comfyui_url is accepted when it is one of Config.ComfyUIServers, or a
// loopback address, or the address the request came from (the ComfyUI that
// runs the pack calls from its own host); any other host is refused, so
// that a request cannot make the daemon post prompts to a third machine.
// An unspecified host (ComfyUI listening on 0.0.0.0 or ::) becomes the
// request's source address.
func (s *Server) rerollTarget(r *http.Request, sent string) (target, setting string, code int, err error) {
	if sent == "" {
		if len(s.cfg.ComfyUIServers) == 0 {
			return "", "", http.StatusNotImplemented, errors.New("reroll: the node pack sent no comfyui_url and comfyui.servers is empty: set comfyui.servers in the daemon's config")
		}
		return strings.TrimRight(s.cfg.ComfyUIServers[0], "/"), settingFallback, 0, nil
	}
	bad := func(format string, args ...any) (string, string, int, error) {
		return "", "", http.StatusBadRequest, fmt.Errorf("reroll: comfyui_url %q: "+format, append([]any{sent}, args...)...)
	}
	u, err := url.Parse(sent)
	if err != nil {
		return bad("%v", err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" ||
		strings.Trim(u.Path, "/") != "" {
		return bad("want http(s)://host:port")
	}
	for _, c := range s.cfg.ComfyUIServers {
		if strings.TrimRight(c, "/") == strings.TrimRight(sent, "/") {
			return strings.TrimRight(sent, "/"), settingPackURL, 0, nil
		}
	}
	src, _, _ := net.SplitHostPort(r.RemoteAddr)
	srcIP := net.ParseIP(src)
	host := u.Hostname()
	var ips []net.IP
	if ip := net.ParseIP(host); ip != nil {
		ips = []net.IP{ip}
	} else {
		addrs, err := net.DefaultResolver.LookupIPAddr(r.Context(), host)
		if err != nil {
			return bad("resolve %s: %v", host, err)
		}
		for _, a := range addrs {
			ips = append(ips, a.IP)
		}
	}
	if len(ips) == 1 && ips[0].IsUnspecified() {
		if srcIP == nil {
			return bad("ComfyUI listens on every address and the request's source is unknown")
		}
		h := srcIP.String()
		if strings.Contains(h, ":") {
			h = "[" + h + "]"
		}
		if p := u.Port(); p != "" {
			h += ":" + p
		}
		u.Host = h
		return strings.TrimRight(u.String(), "/"), settingPackURL, 0, nil
	}
	for _, ip := range ips {
		if !ip.IsLoopback() && !(srcIP != nil && ip.Equal(srcIP)) {
			return "", "", http.StatusForbidden, fmt.Errorf("reroll: comfyui_url %q is neither in comfyui.servers, nor a loopback address, nor the address the request came from (%s): not queued", sent, src)
		}
	}
	return strings.TrimRight(sent, "/"), settingPackURL, 0, nil
}
