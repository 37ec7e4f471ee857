// Package metrics evaluates predicted scores against labels: the correlation
// metrics of image-quality assessment (SRCC, PLCC raw and after the
// 5-parameter logistic mapping, KRCC tau-b, RMSE; the statistics themselves
// live in schemas/iqa, shared with the model process) with seeded bootstrap
// confidence intervals, and evaluation reports (JSON, CSV and a PNG scatter
// plot).
package metrics
