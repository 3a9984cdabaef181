package luatest

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

const (
	customizationsRoot = "../resource_customizations"
	configMapPath      = "../argocd-cm.yaml"
)

var update = flag.Bool("update", false, "rewrite ../argocd-cm.yaml from the customizations")

// bothLibs: a script must behave the same from argocd-cm (restricted) and built into Argo CD (open).
var bothLibs = []Libs{Restricted, Open}

func loadAll(t *testing.T) []Customization {
	t.Helper()
	customizations, err := LoadCustomizations(customizationsRoot)
	if err != nil {
		t.Fatal(err)
	}
	if len(customizations) == 0 {
		t.Fatalf("no customizations under %s", customizationsRoot)
	}
	return customizations
}

func readObject(t *testing.T, path string) map[string]any {
	t.Helper()
	obj, err := ReadObject(path)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

func TestHealthChecks(t *testing.T) {
	for _, custom := range loadAll(t) {
		if custom.HealthLua == "" {
			continue
		}
		var tests HealthTests
		if err := ReadYAML(filepath.Join(custom.Dir, "health_test.yaml"), &tests); err != nil {
			t.Fatalf("%s has a health.lua but no usable health_test.yaml: %v", custom.Dir, err)
		}
		if len(tests.Tests) == 0 {
			t.Fatalf("%s/health_test.yaml has no tests", custom.Dir)
		}
		for _, test := range tests.Tests {
			obj := readObject(t, filepath.Join(custom.Dir, test.InputPath))
			for _, libs := range bothLibs {
				name := filepath.ToSlash(filepath.Join(custom.Group, custom.Kind, test.InputPath)) + "/" + libs.String()
				t.Run(name, func(t *testing.T) {
					got, err := Health(obj, custom.HealthLua, libs)
					if err != nil {
						t.Fatalf("health.lua failed: %v", err)
					}
					if got != test.HealthStatus {
						t.Errorf("health:\n got  %+v\n want %+v", got, test.HealthStatus)
					}
				})
			}
		}
	}
}

// TestHealthTestdataIsCovered catches a testdata file added without an expectation.
func TestHealthTestdataIsCovered(t *testing.T) {
	for _, custom := range loadAll(t) {
		if custom.HealthLua == "" {
			continue
		}
		var tests HealthTests
		if err := ReadYAML(filepath.Join(custom.Dir, "health_test.yaml"), &tests); err != nil {
			t.Fatal(err)
		}
		tested := map[string]bool{}
		for _, test := range tests.Tests {
			tested[filepath.Clean(test.InputPath)] = true
		}
		files, err := filepath.Glob(filepath.Join(custom.Dir, "testdata", "*.yaml"))
		if err != nil {
			t.Fatal(err)
		}
		for _, file := range files {
			rel, _ := filepath.Rel(custom.Dir, file)
			if !tested[rel] {
				t.Errorf("%s is not used by %s/health_test.yaml", rel, custom.Dir)
			}
		}
	}
}

func TestActions(t *testing.T) {
	for _, custom := range loadAll(t) {
		if custom.DiscoveryLua == "" {
			continue
		}
		var tests ActionTests
		if err := ReadYAML(filepath.Join(custom.Dir, "actions", "action_test.yaml"), &tests); err != nil {
			t.Fatalf("%s has actions but no usable actions/action_test.yaml: %v", custom.Dir, err)
		}
		prefix := custom.Group + "/" + custom.Kind
		for _, test := range tests.DiscoveryTests {
			obj := readObject(t, filepath.Join(custom.Dir, "actions", test.InputPath))
			for _, libs := range bothLibs {
				t.Run(prefix+"/discovery/"+test.InputPath+"/"+libs.String(), func(t *testing.T) {
					got, err := DiscoverActions(obj, custom.DiscoveryLua, libs)
					if err != nil {
						t.Fatalf("discovery.lua failed: %v", err)
					}
					if want := sortedActions(test.Result); !reflect.DeepEqual(sortedActions(got), want) {
						t.Errorf("actions:\n got  %+v\n want %+v", sortedActions(got), want)
					}
				})
			}
		}
		for _, test := range tests.ActionTests {
			script, ok := custom.ActionLua[test.Action]
			if !ok {
				t.Fatalf("%s: action_test.yaml names action %q, which has no actions/%s/action.lua",
					custom.Dir, test.Action, test.Action)
			}
			input := filepath.Join(custom.Dir, "actions", test.InputPath)
			expected := readObject(t, filepath.Join(custom.Dir, "actions", test.ExpectedOutputPath))
			for _, libs := range bothLibs {
				t.Run(prefix+"/actions/"+test.Action+"/"+test.InputPath+"/"+libs.String(), func(t *testing.T) {
					got, err := RunAction(readObject(t, input), script, libs)
					if err != nil {
						t.Fatalf("action.lua failed: %v", err)
					}
					if !reflect.DeepEqual(normalise(t, got), normalise(t, expected)) {
						t.Errorf("object after %s differs from %s:\n--- got\n%s--- want\n%s",
							test.Action, test.ExpectedOutputPath, toYAML(t, got), toYAML(t, expected))
					}
				})
			}
		}
	}
}

func TestConfigMapIsInSync(t *testing.T) {
	rendered := RenderConfigMap(loadAll(t))
	if *update {
		if err := os.WriteFile(configMapPath, []byte(rendered), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	committed, err := os.ReadFile(configMapPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(committed) != rendered {
		t.Fatalf("%s is out of date: run argocd/gen-cm.sh", configMapPath)
	}
}

// TestConfigMapCarriesTheScripts reads argocd-cm.yaml the way Argo CD does and checks that every script
// comes back byte for byte: the YAML nesting is easy to get wrong.
func TestConfigMapCarriesTheScripts(t *testing.T) {
	var configMap struct {
		Data map[string]string `json:"data"`
	}
	if err := ReadYAML(configMapPath, &configMap); err != nil {
		t.Fatal(err)
	}
	for _, custom := range loadAll(t) {
		key := custom.ConfigMapKey()
		if custom.HealthLua != "" && configMap.Data["resource.customizations.health."+key] != custom.HealthLua {
			t.Errorf("health script for %s differs from %s/health.lua", key, custom.Dir)
		}
		if custom.DiscoveryLua == "" {
			continue
		}
		var actions struct {
			DiscoveryLua string `json:"discovery.lua"`
			Definitions  []struct {
				Name      string `json:"name"`
				ActionLua string `json:"action.lua"`
			} `json:"definitions"`
		}
		if err := yaml.Unmarshal([]byte(configMap.Data["resource.customizations.actions."+key]), &actions); err != nil {
			t.Fatalf("actions for %s: %v", key, err)
		}
		if actions.DiscoveryLua != custom.DiscoveryLua {
			t.Errorf("discovery script for %s differs from %s/actions/discovery.lua", key, custom.Dir)
		}
		if len(actions.Definitions) != len(custom.ActionLua) {
			t.Errorf("%s: %d action definitions, want %d", key, len(actions.Definitions), len(custom.ActionLua))
		}
		for _, definition := range actions.Definitions {
			if custom.ActionLua[definition.Name] != definition.ActionLua {
				t.Errorf("action %q for %s differs from its action.lua", definition.Name, key)
			}
		}
	}
}

func TestApproveRefusesARunThatIsNotWaitingForApproval(t *testing.T) {
	custom := findCustomization(t, "dbops.io", "DatabaseMigration")
	obj := readObject(t, filepath.Join(custom.Dir, "actions", "testdata", "migrating.yaml"))
	_, err := RunAction(obj, custom.ActionLua["approve"], Restricted)
	if err == nil || !strings.Contains(err.Error(), "is not awaiting approval (phase Migrating)") {
		t.Fatalf("approve on a running migration: got error %v, want a refusal naming the phase", err)
	}
}

func findCustomization(t *testing.T, group, kind string) Customization {
	t.Helper()
	for _, custom := range loadAll(t) {
		if custom.Group == group && custom.Kind == kind {
			return custom
		}
	}
	t.Fatalf("no customization for %s/%s", group, kind)
	return Customization{}
}

func sortedActions(actions []ResourceAction) []ResourceAction {
	sorted := append([]ResourceAction{}, actions...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	return sorted
}

// normalise makes two objects comparable whatever their number types: both go through JSON.
func normalise(t *testing.T, obj map[string]any) any {
	t.Helper()
	data, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(data, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func toYAML(t *testing.T, obj map[string]any) string {
	t.Helper()
	data, err := yaml.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}
