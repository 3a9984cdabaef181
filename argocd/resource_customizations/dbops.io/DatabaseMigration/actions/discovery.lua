-- Argo CD resource actions for dbops.io/v1alpha1 DatabaseMigration.
-- "approve" is offered only while the run waits for approval and nobody has approved it yet.
local actions = {}

local phase = nil
if obj.status ~= nil then
  phase = obj.status.phase
end

local approved = obj.metadata.annotations ~= nil and obj.metadata.annotations["dbops.io/approved"] == "true"

actions["approve"] = {
  ["displayName"] = "Approve migration",
  ["iconClass"] = "fa fa-fw fa-check",
  ["disabled"] = phase ~= "AwaitingApproval" or approved,
}

return actions
