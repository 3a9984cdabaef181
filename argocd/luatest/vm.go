// Package luatest evaluates Argo CD resource customizations (health checks and resource actions) the way
// Argo CD evaluates them, so they can be tested without an Argo CD installation.
//
// It follows Argo CD's util/lua package: the same Lua engine (gopher-lua), the resource handed over as the
// global `obj`, a one-second deadline, the same conversion of the script's return value, and the same choice
// of libraries. Scripts installed through argocd-cm run with only the package, base and table libraries
// (plus a reduced os library that this package leaves out, so scripts needing it fail here first) unless
// the customization sets useOpenLibs; Argo CD's built-in scripts run with every library. Tests run each script
// in both environments.
package luatest

import (
	"context"
	"fmt"
	"time"

	lua "github.com/yuin/gopher-lua"
)

// Libs selects the Lua libraries a script can use.
type Libs int

const (
	// Restricted is what Argo CD gives scripts from argocd-cm by default: package, base and table.
	Restricted Libs = iota
	// Open is every standard library, as for Argo CD's built-in scripts or useOpenLibs: true.
	Open
)

func (l Libs) String() string {
	if l == Open {
		return "open-libs"
	}
	return "restricted-libs"
}

// scriptTimeout is Argo CD's deadline for one script run.
const scriptTimeout = time.Second

// HealthStatus is what a health.lua returns.
type HealthStatus struct {
	Status  string `json:"status"`
	Message string `json:"message,omitempty"`
}

// ResourceAction is one entry of what a discovery.lua returns.
type ResourceAction struct {
	Name        string `json:"name"`
	Disabled    bool   `json:"disabled,omitempty"`
	IconClass   string `json:"iconClass,omitempty"`
	DisplayName string `json:"displayName,omitempty"`
}

var validHealthStatuses = map[string]bool{
	"Unknown": true, "Progressing": true, "Suspended": true, "Healthy": true, "Degraded": true, "Missing": true,
}

// run executes script with obj bound to the global `obj` and returns the script's return value as Go data
// (maps, slices, strings, float64, bool, nil).
func run(obj map[string]any, script string, libs Libs) (any, error) {
	state := lua.NewState(lua.Options{SkipOpenLibs: libs == Restricted})
	defer state.Close()
	if libs == Restricted {
		for _, lib := range []struct {
			name string
			open lua.LGFunction
		}{
			{lua.LoadLibName, lua.OpenPackage},
			{lua.BaseLibName, lua.OpenBase},
			{lua.TabLibName, lua.OpenTable},
		} {
			if err := state.CallByParam(lua.P{Fn: state.NewFunction(lib.open), Protect: true}, lua.LString(lib.name)); err != nil {
				return nil, fmt.Errorf("opening Lua library %q: %w", lib.name, err)
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), scriptTimeout)
	defer cancel()
	state.SetContext(ctx)
	state.SetGlobal("obj", toLua(state, obj))
	if err := state.DoString(script); err != nil {
		return nil, err
	}
	returned, ok := state.Get(-1).(*lua.LTable)
	if !ok {
		return nil, fmt.Errorf("expected a table from the Lua script, got %s", state.Get(-1).Type())
	}
	return fromLua(returned)
}

// Health runs a health.lua against obj.
func Health(obj map[string]any, script string, libs Libs) (HealthStatus, error) {
	returned, err := run(obj, script, libs)
	if err != nil {
		return HealthStatus{}, err
	}
	fields, ok := returned.(map[string]any)
	if !ok {
		return HealthStatus{}, fmt.Errorf("expected a table with status and message, got %v", returned)
	}
	status, _ := fields["status"].(string)
	message, _ := fields["message"].(string)
	if !validHealthStatuses[status] {
		// Argo CD reports an invalid status as Unknown rather than failing.
		return HealthStatus{Status: "Unknown", Message: "Lua returned an invalid health status"}, nil
	}
	return HealthStatus{Status: status, Message: message}, nil
}

// DiscoverActions runs a discovery.lua against obj.
func DiscoverActions(obj map[string]any, script string, libs Libs) ([]ResourceAction, error) {
	returned, err := run(obj, script, libs)
	if err != nil {
		return nil, err
	}
	if list, ok := returned.([]any); ok && len(list) == 0 {
		return nil, nil // an empty table: no actions
	}
	byName, ok := returned.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("expected a table of actions keyed by name, got %v", returned)
	}
	actions := make([]ResourceAction, 0, len(byName))
	for name, value := range byName {
		action := ResourceAction{Name: name}
		if fields, ok := value.(map[string]any); ok {
			action.Disabled, _ = fields["disabled"].(bool)
			action.IconClass, _ = fields["iconClass"].(string)
			action.DisplayName, _ = fields["displayName"].(string)
		}
		actions = append(actions, action)
	}
	return actions, nil
}

// RunAction runs an action.lua against obj and returns the object it produces (an old-style, patch action).
func RunAction(obj map[string]any, script string, libs Libs) (map[string]any, error) {
	returned, err := run(obj, script, libs)
	if err != nil {
		return nil, err
	}
	result, ok := returned.(map[string]any)
	if !ok {
		return nil, fmt.Errorf("expected the modified object from the action, got %v", returned)
	}
	return restoreEmptyMaps(result, obj), nil
}

// toLua converts decoded JSON/YAML data into Lua values, as Argo CD does before a script runs.
func toLua(state *lua.LState, value any) lua.LValue {
	switch v := value.(type) {
	case bool:
		return lua.LBool(v)
	case float64:
		return lua.LNumber(v)
	case int64:
		return lua.LNumber(v)
	case int:
		return lua.LNumber(v)
	case string:
		return lua.LString(v)
	case []any:
		table := state.CreateTable(len(v), 0)
		for _, item := range v {
			table.Append(toLua(state, item))
		}
		return table
	case map[string]any:
		table := state.CreateTable(0, len(v))
		for key, item := range v {
			table.RawSetString(key, toLua(state, item))
		}
		return table
	default:
		return lua.LNil
	}
}

// fromLua converts a script's return value back, as Argo CD's JSON encoding of it does: a table whose keys
// are 1..n is a list, an empty table is an empty list, any other table needs string keys and is a map.
func fromLua(value lua.LValue) (any, error) {
	switch v := value.(type) {
	case *lua.LNilType:
		return nil, nil
	case lua.LBool:
		return bool(v), nil
	case lua.LNumber:
		return float64(v), nil
	case lua.LString:
		return string(v), nil
	case *lua.LTable:
		keys := 0
		v.ForEach(func(lua.LValue, lua.LValue) { keys++ })
		if length := v.MaxN(); keys == length {
			list := make([]any, 0, length)
			for i := 1; i <= length; i++ {
				item, err := fromLua(v.RawGetInt(i))
				if err != nil {
					return nil, err
				}
				list = append(list, item)
			}
			return list, nil
		}
		fields := make(map[string]any, keys)
		var err error
		v.ForEach(func(key, item lua.LValue) {
			if err != nil {
				return
			}
			name, ok := key.(lua.LString)
			if !ok {
				err = fmt.Errorf("table mixes list entries and fields (key %v)", key)
				return
			}
			fields[string(name)], err = fromLua(item)
		})
		return fields, err
	default:
		return nil, fmt.Errorf("cannot convert Lua %s to data", value.Type())
	}
}

// restoreEmptyMaps undoes the one lossy step of the conversion: Lua cannot tell an empty map from an empty
// list, so where the input had a map and the output has an empty list, Argo CD puts the map back.
func restoreEmptyMaps(output, input map[string]any) map[string]any {
	for key, newValue := range output {
		oldValue, ok := input[key]
		if !ok {
			continue
		}
		switch typed := newValue.(type) {
		case map[string]any:
			if oldMap, ok := oldValue.(map[string]any); ok {
				output[key] = restoreEmptyMaps(typed, oldMap)
			}
		case []any:
			switch oldTyped := oldValue.(type) {
			case map[string]any:
				if len(typed) == 0 {
					output[key] = oldTyped
				}
			case []any:
				for i := range typed {
					if i >= len(oldTyped) {
						break
					}
					newItem, newIsMap := typed[i].(map[string]any)
					oldItem, oldIsMap := oldTyped[i].(map[string]any)
					if newIsMap && oldIsMap {
						typed[i] = restoreEmptyMaps(newItem, oldItem)
					}
				}
			}
		}
	}
	return output
}
