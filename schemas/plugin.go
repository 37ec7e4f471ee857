package schemas

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/hashicorp/go-plugin"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/m3gate/m3gate/schemas/gen/m3gatev1"
)

// Handshake is the go-plugin handshake shared by m3gate and m3gate-sidecar.
// Bump ProtocolVersion on any incompatible change of m3gate.proto.
var Handshake = plugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "M3GATE_SIDECAR_PLUGIN",
	MagicCookieValue: "6d3367617465-scorer-a7f1c2e9",
}

// ParentPIDEnv names the environment variable in which the host passes its
// process id to the sidecar, so a sidecar whose host died while it was
// starting notices at once.
const ParentPIDEnv = "M3GATE_SIDECAR_PARENT_PID"

// PluginName is the name the scorer is dispensed under.
const PluginName = "scorer"

// MaxMessageBytes is the gRPC message limit on both sides: large enough for
// a batch of 50 MB images (gRPC's default is 4 MiB).
const MaxMessageBytes = 512 << 20

// IsPluginProcess reports whether this process was started by go-plugin with
// m3gate's magic cookie.
func IsPluginProcess() bool {
	return os.Getenv(Handshake.MagicCookieKey) == Handshake.MagicCookieValue
}

// PluginMap is the go-plugin plugin set: impl is served on the sidecar side
// and nil on the host side.
func PluginMap(impl Scorer) plugin.PluginSet {
	return plugin.PluginSet{PluginName: &ScorerPlugin{Impl: impl}}
}

// NewGRPCServer is the ServeConfig.GRPCServer factory: go-plugin's options
// (TLS) plus raised message limits.
func NewGRPCServer(opts []grpc.ServerOption) *grpc.Server {
	opts = append(opts, grpc.MaxRecvMsgSize(MaxMessageBytes), grpc.MaxSendMsgSize(MaxMessageBytes))
	return grpc.NewServer(opts...)
}

// DialOptions are the ClientConfig.GRPCDialOptions the host must use.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(MaxMessageBytes),
		grpc.MaxCallSendMsgSize(MaxMessageBytes),
	)}
}

// ScorerPlugin is the go-plugin GRPCPlugin of the scorer.
type ScorerPlugin struct {
	plugin.NetRPCUnsupportedPlugin
	// Impl is the served implementation (sidecar side only).
	Impl Scorer
}

// GRPCServer registers Impl on the plugin's gRPC server.
func (p *ScorerPlugin) GRPCServer(_ *plugin.GRPCBroker, s *grpc.Server) error {
	if p.Impl == nil {
		return errors.New("scorer plugin: no implementation to serve")
	}
	pb.RegisterScorerServer(s, &grpcServer{impl: p.Impl})
	return nil
}

// GRPCClient returns a Scorer that calls the sidecar over conn.
func (p *ScorerPlugin) GRPCClient(_ context.Context, _ *plugin.GRPCBroker, conn *grpc.ClientConn) (interface{}, error) {
	return NewClient(conn), nil
}

// NewClient returns a Scorer speaking the contract over an established
// gRPC connection.
func NewClient(conn grpc.ClientConnInterface) Scorer {
	return &grpcClient{c: pb.NewScorerClient(conn)}
}

// RegisterServer registers impl on s (for serving outside go-plugin).
func RegisterServer(s *grpc.Server, impl Scorer) {
	pb.RegisterScorerServer(s, &grpcServer{impl: impl})
}

type grpcServer struct {
	pb.UnimplementedScorerServer
	impl Scorer
}

func (s *grpcServer) Load(req *pb.LoadRequest, stream grpc.ServerStreamingServer[pb.LoadProgress]) error {
	var sendErr error
	err := s.impl.Load(stream.Context(), loadRequestFromProto(req), func(p LoadProgress) {
		if sendErr == nil {
			sendErr = stream.Send(progressToProto(p))
		}
	})
	if err == nil {
		err = sendErr
	}
	return toStatus(err)
}

func (s *grpcServer) Status(ctx context.Context, _ *pb.StatusRequest) (*pb.StatusResponse, error) {
	st, err := s.impl.Status(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return statusToProto(st), nil
}

func (s *grpcServer) Score(ctx context.Context, req *pb.ScoreRequest) (*pb.ScoreResponse, error) {
	rs, err := s.impl.Score(ctx, scoreRequestFromProto(req))
	if err != nil {
		return nil, toStatus(err)
	}
	return resultsToProto(rs), nil
}

func (s *grpcServer) Unload(ctx context.Context, _ *pb.UnloadRequest) (*pb.UnloadResponse, error) {
	if err := s.impl.Unload(ctx); err != nil {
		return nil, toStatus(err)
	}
	return &pb.UnloadResponse{}, nil
}

type grpcClient struct{ c pb.ScorerClient }

func (c *grpcClient) Load(ctx context.Context, req LoadRequest, progress func(LoadProgress)) error {
	stream, err := c.c.Load(ctx, loadRequestToProto(req))
	if err != nil {
		return fromStatus(ctx, err)
	}
	for {
		p, err := stream.Recv()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fromStatus(ctx, err)
		}
		if progress != nil {
			progress(progressFromProto(p))
		}
	}
}

func (c *grpcClient) Status(ctx context.Context) (Status, error) {
	r, err := c.c.Status(ctx, &pb.StatusRequest{})
	if err != nil {
		return Status{}, fromStatus(ctx, err)
	}
	return statusFromProto(r), nil
}

func (c *grpcClient) Score(ctx context.Context, req ScoreRequest) ([]ItemResult, error) {
	p, err := scoreRequestToProto(req)
	if err != nil {
		return nil, err
	}
	r, err := c.c.Score(ctx, p)
	if err != nil {
		return nil, fromStatus(ctx, err)
	}
	return resultsFromProto(r), nil
}

func (c *grpcClient) Unload(ctx context.Context) error {
	_, err := c.c.Unload(ctx, &pb.UnloadRequest{})
	return fromStatus(ctx, err)
}

// sentinelCodes maps the contract's errors onto gRPC codes.
var sentinelCodes = []struct {
	err  error
	code codes.Code
}{
	{ErrNoScorer, codes.Unimplemented},
	{ErrNotLoaded, codes.FailedPrecondition},
	{ErrInvalid, codes.InvalidArgument},
	{context.Canceled, codes.Canceled},
	{context.DeadlineExceeded, codes.DeadlineExceeded},
}

func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	for _, s := range sentinelCodes {
		if errors.Is(err, s.err) {
			return status.Error(s.code, err.Error())
		}
	}
	return status.Error(codes.Unknown, err.Error())
}

// RemoteError is an error returned by the model process. Its message is the
// sidecar's; errors.Is matches the contract's sentinel errors.
type RemoteError struct {
	Code    codes.Code
	Message string
	kind    error
}

// Error returns the sidecar's message.
func (e *RemoteError) Error() string { return e.Message }

// Unwrap returns the sentinel error the gRPC code stands for, if any.
func (e *RemoteError) Unwrap() error { return e.kind }

func fromStatus(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		return ctxErr
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	re := &RemoteError{Code: st.Code(), Message: st.Message()}
	for _, s := range sentinelCodes {
		if s.code == st.Code() {
			re.kind = s.err
		}
	}
	if st.Code() == codes.Unavailable {
		re.kind = ErrUnavailable
		re.Message = fmt.Sprintf("%s: %s", ErrUnavailable, st.Message())
	}
	if st.Code() == codes.ResourceExhausted {
		re.Message = fmt.Sprintf("model process refused the message: %s", st.Message())
	}
	return re
}
