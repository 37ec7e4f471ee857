package cli

import "github.com/spf13/cobra"

// newTrainPredictorCmd builds `m3gate train-predictor`: train the xLSTM predictor.
func newTrainPredictorCmd(app *App) *cobra.Command {
	return notImplementedCmd("train-predictor", "Train the xLSTM score predictor for one aspect", 5)
}
