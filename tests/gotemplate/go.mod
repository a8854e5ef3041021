module fastft/gotemplate

go 1.26

// Every module is vendored (vendor/, see VENDOR.md): build with -mod=vendor, no network.
// Versions are those ollama's go.mod pins at the vendored commit.
require (
	github.com/ollama/ollama v0.0.0-20260822014822-fb3076099687
)

require (
	github.com/agnivade/levenshtein v1.1.1 // indirect
	github.com/bahlo/generic-list-go v0.2.0 // indirect
	github.com/buger/jsonparser v1.1.1 // indirect
	github.com/google/uuid v1.6.0 // indirect
	github.com/mailru/easyjson v0.7.7 // indirect
	github.com/wk8/go-ordered-map/v2 v2.1.8 // indirect
	golang.org/x/mod v0.30.0 // indirect
	golang.org/x/sync v0.17.0 // indirect
	golang.org/x/text v0.30.0 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)
