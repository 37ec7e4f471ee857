package main

import (
	"github.com/m3gate/m3gate/sidecar/m3"
	"github.com/m3gate/m3gate/sidecar/service"
)

// engine is the scoring engine the sidecar serves: the M3-AGIQA scorer.
var engine service.Engine = m3.NewEngine()
