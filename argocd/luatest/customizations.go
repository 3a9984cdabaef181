package luatest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

// Customization is one resource kind's folder in Argo CD's layout:
// <group>/<Kind>/health.lua, health_test.yaml, actions/discovery.lua, actions/<name>/action.lua, actions/action_test.yaml.
type Customization struct {
	Dir          string // the <group>/<Kind> folder
	Group, Kind  string
	HealthLua    string            // empty when there is no health check
	DiscoveryLua string            // empty when there are no actions
	ActionLua    map[string]string // action name -> script
}

// ConfigMapKey is the suffix Argo CD expects in argocd-cm keys: group_Kind, or Kind for the core group.
func (c Customization) ConfigMapKey() string {
	if c.Group == "" {
		return c.Kind
	}
	return c.Group + "_" + c.Kind
}

// ActionNames lists the actions in a stable order.
func (c Customization) ActionNames() []string {
	names := make([]string, 0, len(c.ActionLua))
	for name := range c.ActionLua {
		names = append(names, name)
	}
	sort.Strings(names)
	return names
}

// HealthTests is health_test.yaml in Argo CD's format.
type HealthTests struct {
	Tests []struct {
		HealthStatus HealthStatus `json:"healthStatus"`
		InputPath    string       `json:"inputPath"`
	} `json:"tests"`
}

// ActionTests is actions/action_test.yaml in Argo CD's format.
type ActionTests struct {
	DiscoveryTests []struct {
		InputPath string           `json:"inputPath"`
		Result    []ResourceAction `json:"result"`
	} `json:"discoveryTests"`
	ActionTests []struct {
		Action             string `json:"action"`
		InputPath          string `json:"inputPath"`
		ExpectedOutputPath string `json:"expectedOutputPath"`
	} `json:"actionTests"`
}

// LoadCustomizations finds every <group>/<Kind> folder under root that holds a health.lua or actions/.
func LoadCustomizations(root string) ([]Customization, error) {
	var found []Customization
	err := filepath.WalkDir(root, func(path string, entry fs.DirEntry, err error) error {
		if err != nil || !entry.IsDir() {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		parts := strings.Split(filepath.ToSlash(rel), "/")
		if len(parts) != 2 {
			return nil
		}
		custom, err := loadCustomization(path, parts[0], parts[1])
		if err != nil {
			return err
		}
		if custom.HealthLua != "" || custom.DiscoveryLua != "" {
			found = append(found, custom)
		}
		return nil
	})
	return found, err
}

func loadCustomization(dir, group, kind string) (Customization, error) {
	// Argo CD writes the core group's kinds as _/<Kind>.
	if group == "_" {
		group = ""
	}
	custom := Customization{Dir: dir, Group: group, Kind: kind, ActionLua: map[string]string{}}
	var err error
	if custom.HealthLua, err = readOptional(filepath.Join(dir, "health.lua")); err != nil {
		return custom, err
	}
	if custom.DiscoveryLua, err = readOptional(filepath.Join(dir, "actions", "discovery.lua")); err != nil {
		return custom, err
	}
	actionDirs, err := os.ReadDir(filepath.Join(dir, "actions"))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return custom, err
	}
	for _, actionDir := range actionDirs {
		if !actionDir.IsDir() {
			continue
		}
		script, err := readOptional(filepath.Join(dir, "actions", actionDir.Name(), "action.lua"))
		if err != nil {
			return custom, err
		}
		if script != "" {
			custom.ActionLua[actionDir.Name()] = script
		}
	}
	return custom, nil
}

func readOptional(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return "", nil
	}
	return string(data), err
}

// ReadYAML decodes a YAML file the way Argo CD's tests do (YAML to JSON, numbers as float64).
func ReadYAML(path string, into any) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if err := yaml.Unmarshal(data, into); err != nil {
		return fmt.Errorf("parsing %s: %w", path, err)
	}
	return nil
}

// ReadObject reads a Kubernetes object from a YAML file.
func ReadObject(path string) (map[string]any, error) {
	obj := map[string]any{}
	err := ReadYAML(path, &obj)
	return obj, err
}
